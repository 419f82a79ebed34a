"""CRCKD end to end at toy size: two-view data stream, the full objective vs NumPy, 1 vs 8 devices, no recompiles."""

import jax
import numpy as np
import pytest
import torch

from configs import common
from foprokd_jax import parallel
from foprokd_jax.data.registry import LoadedDataset
from foprokd_jax.methods import crckd
from foprokd_jax.methods.crckd import data as crckd_data
from foprokd_jax.methods.crckd import method as crckd_method
from foprokd_jax.methods.crckd import step as crckd_step
from foprokd_jax.porting.torch_compat import import_torchvision

COUNTS = (16, 10, 6)  # a small long tail; 32 training images
SIZE, BATCH = 32, 16  # 2 steps per epoch


def _dataset():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    rng.shuffle(labels)
    # Each image carries its class in the mean brightness, plus noise.
    images = [np.clip(rng.normal(60 + 60 * y, 30, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for y in labels]
    train = [{"image": im, "label": np.int32(y)} for im, y in zip(images, labels)]
    return LoadedDataset(
        name="toy",
        class_names=("a", "b", "c"),
        sources={"train": train, "test": train[:16]},
        ids={},
        train_labels=labels.astype(np.int32),
    )


def _config(**crckd):
    config = common.method_config("crckd")
    config.input.image_size, config.input.batch_size = SIZE, BATCH
    config.total_steps = 8
    config.crckd.update(
        dict(
            growth_rate=8,
            block_config=(1, 1),
            num_init_features=16,
            bn_size=2,
            feat_dim=16,
            nce_p=3,
            nce_k=12,
            begin_distill_epoch=1,
            consistency_rampup_epochs=3.0,
        ),
        **crckd,
    )
    return config


def _run(num_devices, num_steps=4, **crckd):
    dataset = _dataset()
    mesh = parallel.make_mesh(num_devices)
    parts = crckd_method.build(_config(**crckd), mesh, dataset, steps_per_epoch=len(dataset.train_labels) // BATCH)
    state, history, batches = parts.state, [], []
    for _ in range(num_steps):
        batch = next(parts.train_iterator)
        batches.append(batch)
        state, metrics = parts.train_step(state, parts.frozen, parallel.host_batch_to_global(batch, mesh))
        history.append(parallel.to_host(metrics))
    return parts, jax.device_get(state), history, batches, mesh


def _assert_trees_close(a, b, tol, what):
    flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
    for path, leaf in jax.tree_util.tree_leaves_with_path(a):
        np.testing.assert_allclose(
            np.asarray(leaf), np.asarray(flat_b[path]), rtol=tol, atol=tol, err_msg=what + jax.tree_util.keystr(path)
        )


def test_one_and_eight_devices_agree_and_the_step_never_recompiles():
    parts1, state1, hist1, batches1, mesh1 = _run(1)
    parts8, state8, hist8, batches8, mesh8 = _run(8)
    for b1, b8 in zip(batches1, batches8):  # the stream does not depend on the mesh
        for key in b1:
            np.testing.assert_array_equal(b1[key], b8[key])
    assert [h["weight_crp"] for h in hist1] == [0.0, 0.0, 1.0, 1.0]  # epochs 0, 0, 1, 1: every term was active
    for m1, m8 in zip(hist1, hist8):
        for key in m1:
            np.testing.assert_allclose(
                m1[key], m8[key], rtol=1e-4 if key == "grad_norm" else 2e-5, atol=1e-5, err_msg=key
            )
    for part in ("params", "batch_stats", "teacher_params", "mem_s", "mem_t", "z_s", "z_t"):
        _assert_trees_close(getattr(state1, part), getattr(state8, part), 2e-5, part)
    assert int(state1.step) == 4 and float(state1.z_s) > 0 and float(state1.z_t) > 0
    # Schedules are traced: 4 steps over 2 epochs (weights changing) compiled exactly once.
    assert parts1.train_step._cache_size() == 1 and parts8.train_step._cache_size() == 1
    # The student (not the teacher) is evaluated, in eval mode; replicated logits of the whole batch.
    eval_batch = {
        "image": np.stack([example["image"] for example in _dataset().sources["test"]]),
        "label": np.zeros(16, np.int32),
        "mask": np.ones(16, bool),
    }
    logits1 = np.asarray(
        parts1.predict_step(parallel.replicate(state1, mesh1), parallel.host_batch_to_global(eval_batch, mesh1))
    )
    logits8 = np.asarray(
        parts8.predict_step(parallel.replicate(state8, mesh8), parallel.host_batch_to_global(eval_batch, mesh8))
    )
    assert logits1.shape == (16, 3)
    np.testing.assert_allclose(logits1, logits8, rtol=1e-4, atol=1e-5)


def _np_l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_kl(target_logits, input_logits):
    lt = target_logits - np.log(np.exp(target_logits).sum(-1, keepdims=True))
    ls = input_logits - np.log(np.exp(input_logits).sum(-1, keepdims=True))
    return np.mean(np.sum(np.exp(lt) * (lt - ls), -1))


def _np_nce(scores, P, n_data):
    c = (scores.shape[1] - P) / n_data
    d1 = np.log(scores[:, :P] / (scores[:, :P] + c + 1e-7))
    d0 = np.log(c / (scores[:, P:] + c + 1e-7))
    return -(d1.sum() / P + d0.sum()) / scores.shape[0]


def test_objective_matches_numpy_with_pre_update_scores_and_post_update_centroids():
    """The whole loss of a distillation-stage step, re-derived in float64 from the step's own embeddings."""
    dataset = _dataset()
    mesh = parallel.make_mesh(1)
    config = _config(begin_distill_epoch=0)
    parts = crckd_method.build(config, mesh, dataset, steps_per_epoch=2)
    state = jax.device_get(parts.state)
    batch = next(parts.train_iterator)
    step_cfg = crckd_step.StepConfig(
        num_classes=3,
        n_data=32,
        steps_per_epoch=2,
        weights=crckd_method.schedule.LossWeights(begin_distill_epoch=0, consistency_rampup_epochs=3.0),
        one_cycle=crckd_method.schedule.OneCycle(total_steps=8),
        nce_p=3,
    )
    net = crckd_method.model.CrckdNet(
        num_classes=3,
        feat_dim=16,
        growth_rate=8,
        block_config=(1, 1),
        num_init_features=16,
        bn_size=2,
        bn_axis_name=parallel.DATA_AXIS,
    )
    embed = crckd_method.model.EmbedHead(16, 16)

    def per_device(params, state, frozen, batch):
        x_t = crckd_step.image_norm.normalize_uint8(batch["image_teacher"])
        teacher_out, _ = net.apply(
            {"params": state.teacher_params, "batch_stats": state.batch_stats}, x_t, train=True, mutable=["batch_stats"]
        )
        return crckd_step.crckd_objective(params, state, frozen, batch, teacher_out, net=net, embed=embed, cfg=step_cfg)

    fn = parallel.data_parallel(per_device, mesh, num_replicated=3, num_sharded=1)
    loss, aux = jax.device_get(fn(state.params, state, parts.frozen, parallel.host_batch_to_global(batch, mesh)))
    g_s, g_t = (np.asarray(a, np.float64) for a in aux["embeddings"])
    logit_s, logit_t = (np.asarray(a, np.float64) for a in aux["logits"])
    mem_s, mem_t = np.asarray(state.mem_s, np.float64), np.asarray(state.mem_t, np.float64)
    idx, cidx, y = batch["index"], batch["contrast_idx"], batch["label"]
    np.testing.assert_array_equal(cidx[:, 0], idx)  # own slot is positive #1
    e_s = np.exp(np.einsum("bd,bjd->bj", g_s, mem_t[cidx]) / 0.07)
    e_t = np.exp(np.einsum("bd,bjd->bj", g_t, mem_s[cidx]) / 0.07)
    z_s, z_t = e_s.mean() * 32, e_t.mean() * 32  # set on the first step
    np.testing.assert_allclose(aux["z"], (z_s, z_t), rtol=1e-5)
    ccd = _np_nce(e_s / z_s, 3, 32) + _np_nce(e_t / z_t, 3, 32)
    new_s, new_t = mem_s.copy(), mem_t.copy()
    new_s[idx] = _np_l2n(0.5 * mem_s[idx] + 0.5 * g_s)
    new_t[idx] = _np_l2n(0.5 * mem_t[idx] + 0.5 * g_t)
    np.testing.assert_allclose(aux["banks"][0], new_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["banks"][1], new_t, rtol=1e-5, atol=1e-6)
    labels_all = dataset.train_labels
    cent = [_np_l2n(np.stack([np.maximum(m, 0)[labels_all == k].mean(0) for k in range(3)])) for m in (new_s, new_t)]
    crp = _np_kl(g_t @ cent[1].T / 0.07, g_s @ cent[0].T / 0.07)
    w = 1.0 / np.asarray(COUNTS, np.float64)
    logp = logit_s - np.log(np.exp(logit_s).sum(-1, keepdims=True))
    ce = np.sum(w[y] * -logp[np.arange(len(y)), y]) / np.sum(w[y])
    kl = _np_kl(logit_t, logit_s)
    ramp = np.exp(-5 * (1 - 0 / 3) ** 2)
    terms = aux["terms"]
    np.testing.assert_allclose(
        [terms["loss_ccd"], terms["loss_crp"], terms["loss_kl"], terms["loss_ce"]], [ccd, crp, kl, ce], rtol=2e-5
    )
    np.testing.assert_allclose(loss, ce + 0.01 * ccd + ramp * kl + crp, rtol=2e-5)
    # Ordering matters: scores from POST-update memories or centroids from PRE-update ones differ.
    e_late = np.exp(np.einsum("bd,bjd->bj", g_s, new_t[cidx]) / 0.07)
    assert abs(_np_nce(e_late / z_s, 3, 32) - _np_nce(e_s / z_s, 3, 32)) > 1e-3
    cent_early = [
        _np_l2n(np.stack([np.maximum(m, 0)[labels_all == k].mean(0) for k in range(3)])) for m in (mem_s, mem_t)
    ]
    assert abs(_np_kl(g_t @ cent_early[1].T / 0.07, g_s @ cent_early[0].T / 0.07) - crp) > 1e-4


def test_affine_and_teacher_rot_flip_match_torchvision():
    tv = import_torchvision()
    from PIL import Image
    from torchvision.transforms import functional as F

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    for angle, translate in ((7.3, (1, -1)), (-9.9, (0, 0)), (0.0, (-1, 1))):
        expected = np.asarray(
            F.affine(
                Image.fromarray(image),
                angle=angle,
                translate=list(translate),
                scale=1.0,
                shear=[0.0, 0.0],
                interpolation=tv.transforms.InterpolationMode.NEAREST,
                fill=0,
            )
        )
        np.testing.assert_array_equal(crckd_data.affine(image, angle, translate), expected)
    chw = torch.tensor(image).permute(2, 0, 1)
    for vflip in (False, True):
        for k in range(4):
            t = torch.flip(chw, [1]) if vflip else chw
            expected = torch.rot90(t, k, dims=[1, 2]).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(crckd_data.rot_flip(image, vflip, k), expected)


def test_contrast_sampler_follows_the_reference_rules():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    rng = np.random.default_rng(0)
    sampler = crckd_data.ContrastSampler(labels, 3, num_positives=3, num_negatives=6)
    for index in (0, 12, 16):
        row = sampler.sample(index, labels[index], rng)
        assert row.shape == (9,) and row.dtype == np.int32 and row[0] == index
        pos, neg = row[:3], row[3:]
        assert np.all(labels[pos] == labels[index])
        assert np.all(labels[neg] != labels[index])
        if np.sum(labels != labels[index]) >= 6:  # a pool of >= K negatives: no replacement
            assert len(set(neg.tolist())) == 6
    # Class 0's pool holds 8 < 20 negatives: with replacement (duplicates are then certain).
    wide = crckd_data.ContrastSampler(labels, 3, num_positives=3, num_negatives=20)
    assert len(set(wide.sample(0, 0, rng)[3:].tolist())) <= 8
    unsup = crckd_data.ContrastSampler(
        labels, 3, num_positives=1, num_negatives=500, positive_mode="exact", negative_mode="unsup"
    )
    neg = unsup.sample(4, 0, rng)[1:]
    assert 4 not in neg and set(neg.tolist()) == set(range(18)) - {4}
    with pytest.raises(ValueError, match="nce_p=4"):
        crckd_data.ContrastSampler(labels, 3, num_positives=4, num_negatives=6)


def test_two_view_stream_is_deterministic_resumable_and_indexed():
    dataset = _dataset()
    labels = dataset.train_labels
    sampler = crckd_data.ContrastSampler(labels, 3, 3, 12)
    plain = crckd_data.TwoViewTransform(sampler, augment=False, teacher_rot_flip=False)
    source = dataset.sources["train"]
    it = crckd_data.make_train_iterator(source, plain, BATCH, seed=3, num_threads=1)
    for _ in range(3):  # across an epoch boundary (2 steps per epoch)
        batch = next(it)
        assert batch["contrast_idx"].shape == (BATCH, 15) and batch["image_teacher"].dtype == np.uint8
        for row, index in enumerate(batch["index"]):
            np.testing.assert_array_equal(batch["image"][row], source[index]["image"])
            assert batch["label"][row] == labels[index]
    # Augmented stream: same seed -> same batches; resume from a saved state; process slices tile the batch.
    views = crckd_data.TwoViewTransform(sampler)
    it_a = crckd_data.make_train_iterator(source, views, BATCH, seed=7, num_threads=1)
    first = next(it_a)
    saved = it_a.get_state()
    second = next(it_a)
    assert not np.array_equal(first["image"], first["image_teacher"])  # independent views
    it_b = crckd_data.make_train_iterator(source, views, BATCH, seed=7, num_threads=1)
    it_b.set_state(saved)
    for key, value in next(it_b).items():
        np.testing.assert_array_equal(value, second[key])
    halves = [
        next(
            crckd_data.make_train_iterator(
                source, views, BATCH, seed=7, process_index=p, process_count=2, num_threads=1
            )
        )
        for p in range(2)
    ]
    for key in first:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), first[key])


def test_validate_and_build_refuse_bad_settings():
    dataset = _dataset()
    mesh = parallel.make_mesh(1)
    with pytest.raises(ValueError, match="n_data=20"):
        crckd_method.build(_config(n_data=20), mesh, dataset, steps_per_epoch=2)
    with pytest.raises(ValueError, match="nce_p=7"):
        crckd_method.build(_config(nce_p=7), mesh, dataset, steps_per_epoch=2)
    with pytest.raises(ValueError, match="teacher_init"):
        crckd.validate(_config(teacher_init="copy"))
    with pytest.raises(ValueError, match="positive_mode"):
        crckd.validate(_config(positive_mode="relaxed"))


def test_imagenet_backbone_artifact_initialises_student_and_teacher(tmp_path):
    from foprokd_jax.models.densenet import DenseNet
    from foprokd_jax.porting import artifact

    backbone = DenseNet(growth_rate=8, block_config=(1, 1), num_init_features=16, bn_size=2)
    init = jax.jit(lambda rng: backbone.init(rng, np.zeros((1, SIZE, SIZE, 3), np.float32), train=False))
    variables = jax.device_get(init(jax.random.PRNGKey(9)))
    variables["batch_stats"] = jax.tree.map(lambda v: v + 0.5, variables["batch_stats"])
    path = str(tmp_path / "tiny_densenet.npz")
    # A tiny stand-in labelled densenet121: the loader checks the label, the model checks every shape.
    sidecar = artifact.save_artifact(path, variables, {"arch": "densenet121", "family": "densenet"})
    parts = crckd_method.build(_config(backbone_init=path), parallel.make_mesh(1), _dataset(), 2)
    state = jax.device_get(parts.state)
    assert parts.meta["crckd"]["backbone_sha256"] == sidecar["sha256"]
    for tree in (state.params["net"]["densenet"], state.teacher_params["densenet"]):
        _assert_trees_close(tree, variables["params"], 0.0, "backbone")
    _assert_trees_close(state.batch_stats["densenet"], variables["batch_stats"], 0.0, "batch_stats")
    # The heads are the reference's independent random inits (docs/crckd.md G20), biases zero.
    assert not np.allclose(state.params["net"]["fc_layer"]["kernel"], state.teacher_params["fc_layer"]["kernel"])
    assert not np.any(state.params["net"]["classifier"]["bias"])
    conv0 = variables["params"]["features"]["conv0"]
    conv0["kernel"] = conv0["kernel"][..., :8]  # a backbone of another width
    artifact.save_artifact(path, variables, {"arch": "densenet121", "family": "densenet"})
    with pytest.raises(ValueError, match="conv0"):
        crckd_method.build(_config(backbone_init=path), parallel.make_mesh(1), _dataset(), 2)


@pytest.mark.parametrize("config_module", ["ham10000", "aptos"])
def test_dataset_configs_select_crckd_and_its_baselines(config_module):
    import importlib

    module = importlib.import_module(f"configs.{config_module}")
    reference = module.get_config("method=crckd")
    assert (reference.total_epochs, reference.input.batch_size, reference.input.image_size) == (80, 64, 224)
    assert reference.crckd.backbone_init.endswith("imagenet_densenet121.npz")
    weights = (reference.crckd.ccd_weight_pre, reference.crckd.ccd_weight_post, reference.crckd.crp_weight)
    assert weights == (0.1, 0.01, 1.0)
    assert module.get_config("ccd_post=0.1").crckd.ccd_weight_post == 0.1
    mt = module.get_config("variant=mt")
    assert (mt.crckd.ccd_weight_pre, mt.crckd.crp_weight, mt.crckd.consistency) == (0.0, 0.0, 1.0)
    assert module.get_config("variant=wce").crckd.consistency == 0.0
    assert module.get_config("method=bsm").method == "bsm"
    with pytest.raises(ValueError, match="variant"):
        module.get_config("variant=sp")
    # The runlocal config builds on a toy dataset and streams batches of its shapes.
    config = module.get_config("runlocal")
    parts = crckd_method.build(config, parallel.make_mesh(1), _dataset(), steps_per_epoch=4)
    batch = next(parts.train_iterator)
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["contrast_idx"].shape == (8, config.crckd.nce_p + config.crckd.nce_k)
