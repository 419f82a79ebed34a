"""DenseNet port: torchvision DenseNet -> Flax (models/densenet.py, porting/densenet_weights.py,
launch/convert_teacher.py --arch=densenet121), docs/crckd.md §R2.

No real weights can be downloaded here, so the reference is a random-init torchvision densenet121 whose
BN affine parameters, running statistics and classifier bias are randomised (torchvision's init leaves
them at 1/0/0/1/0, where a wrong mapping would not show). DenseNet-121 itself runs forward once (2x64x64,
eval); train-mode BN, odd-size pooling and cross-device BN use reduced DenseNets.
"""

import copy
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from foprokd_jax import parallel
from foprokd_jax.cli import convert_teacher
from foprokd_jax.models import teachers
from foprokd_jax.models.densenet import DenseNet, densenet121
from foprokd_jax.porting import artifact, densenet_weights
from foprokd_jax.porting.artifact import save_artifact, sha256_file
from foprokd_jax.porting.torch_compat import import_torchvision
from tests.parity_report import parity_report

torchvision = import_torchvision()

# A reduced DenseNet with three blocks, so that two transitions pool odd-sized maps (see the odd-size test).
TINY = {"growth_rate": 8, "block_config": (2, 2, 2), "num_init_features": 16, "bn_size": 2}


class NotATensor:
    """Any custom class: unpickling it needs code execution, which weights_only loading refuses."""


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            elif isinstance(module, torch.nn.Linear):
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def _numpy_state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _to_legacy_keys(state_dict):
    """torchvision's published-checkpoint spelling: 'denselayer1.norm1.weight' -> 'denselayer1.norm.1.weight'."""
    return {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state_dict.items()}


def _images(batch, size, seed):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _nhwc(images_nchw):
    return jnp.asarray(np.transpose(images_nchw, (0, 2, 3, 1)))


def _torch_outputs(model, images_nchw):
    """(pooled features, logits) exactly as torchvision's DenseNet.forward computes them."""
    with torch.no_grad():
        x = torch.from_numpy(images_nchw)
        features = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(model.features(x)), (1, 1)), 1)
        return features.numpy(), model.classifier(features).numpy()


def _assert_nothing_written(out):
    directory = os.path.dirname(out)
    assert not os.path.exists(out) and not os.path.exists(out + ".json")
    assert not [n for n in os.listdir(directory) if n.startswith("." + os.path.basename(out))]


@pytest.fixture(scope="module")
def torch_densenet121():
    torch.manual_seed(0)
    return _randomise(torchvision.models.densenet121(weights=None), seed=1)


@pytest.fixture(scope="module")
def densenet121_state_dict(torch_densenet121):
    return _numpy_state_dict(torch_densenet121)


def _torch_tiny(seed=3, num_classes=5):
    torch.manual_seed(seed)
    model = torchvision.models.DenseNet(**TINY, num_classes=num_classes)
    return _randomise(model, seed + 1)


def test_densenet121_eval_parity(torch_densenet121, densenet121_state_dict):
    variables = densenet_weights.torch_to_flax(densenet121_state_dict)
    images = _images(2, 64, seed=0)
    ours = jax.jit(lambda v, x: densenet121(num_classes=1000).apply(v, x, train=False))(variables, _nhwc(images))
    features, logits = _torch_outputs(torch_densenet121, images)
    assert ours["features"].shape == (2, 1024)
    _, feature_error = parity_report("torchvision DenseNet-121 features 2x3x64x64 (eval)", ours["features"], features)
    _, logit_error = parity_report("torchvision DenseNet-121 logits 2x3x64x64 (eval)", ours["logits"], logits)
    assert feature_error < 1e-4 and logit_error < 1e-4


def test_parameter_counts_match_torchvision(torch_densenet121):
    def count(model):
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))

    torch_total = sum(p.numel() for p in torch_densenet121.parameters())
    torch_trunk = sum(p.numel() for p in torch_densenet121.features.parameters())
    assert count(densenet121(num_classes=1000)) == torch_total == 7_978_856
    assert count(densenet121()) == torch_trunk == 6_953_856
    assert densenet121().feature_dim == torch_densenet121.classifier.in_features == 1024


def test_reduced_densenet_train_and_eval_parity_on_odd_sizes():
    """37 px: conv0 -> 19, pool0 -> 10, transition1 -> 5, transition2 floors 5 -> 2, as torch's AvgPool2d."""
    model_t = _torch_tiny()
    variables = densenet_weights.torch_to_flax(_numpy_state_dict(model_t), "tiny", model_kwargs=TINY)
    model = DenseNet(**TINY, num_classes=5)
    images = _images(4, 37, seed=1)

    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    ours = apply(variables, _nhwc(images), train=False)
    features, logits = _torch_outputs(model_t, images)
    assert parity_report("reduced DenseNet features 4x3x37x37 (eval)", ours["features"], features)[1] < 1e-4
    assert parity_report("reduced DenseNet logits (eval)", ours["logits"], logits)[1] < 1e-4

    # Train mode: normalised with batch statistics; running stats move by 0.1 (flax momentum 0.9).
    trained_t = copy.deepcopy(model_t).train()
    ours, updates = apply(variables, _nhwc(images), train=True, mutable=("batch_stats",))
    features, logits = _torch_outputs(trained_t, images)
    assert parity_report("reduced DenseNet features (train-mode BN)", ours["features"], features)[1] < 1e-4
    assert parity_report("reduced DenseNet logits (train-mode BN)", ours["logits"], logits)[1] < 1e-4
    norm5_t, norm5 = trained_t.features.norm5, updates["batch_stats"]["features"]["norm5"]
    old_mean, old_var = model_t.features.norm5.running_mean.numpy(), model_t.features.norm5.running_var.numpy()
    np.testing.assert_allclose(norm5["mean"], norm5_t.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    # torch feeds the unbiased batch variance into running_var, flax the biased one (docs/crckd.md G18):
    # undo the n/(n-1) factor, n = batch * H * W of norm5's input (4 * 2 * 2).
    n = 4 * 2 * 2
    torch_biased = old_var * 0.9 + (norm5_t.running_var.numpy() - old_var * 0.9) * (n - 1) / n
    np.testing.assert_allclose(norm5["var"], torch_biased, rtol=1e-4)
    assert not np.allclose(norm5["mean"], old_mean)


def test_init_follows_torchvision():
    """kaiming_normal_(fan_in) convs, BN 1/0, classifier bias 0, weight U(+-1/sqrt(fan_in))."""
    model = DenseNet(growth_rate=32, block_config=(2, 2), num_init_features=64, bn_size=4, num_classes=10)
    params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(jnp.zeros((1, 32, 32, 3)))["params"]
    conv0 = np.asarray(params["features"]["conv0"]["kernel"])
    # fan_in = 3 * 7 * 7 = 147 -> std 0.117; fan_out (ResNet's mode) would give 0.025.
    assert abs(conv0.std() / np.sqrt(2.0 / 147) - 1) < 0.05
    conv2 = np.asarray(params["features"]["denseblock1"]["denselayer2"]["conv2"]["kernel"])
    assert conv2.shape == (3, 3, 128, 32) and abs(conv2.std() / np.sqrt(2.0 / (128 * 9)) - 1) < 0.05
    norm1 = params["features"]["denseblock2"]["denselayer1"]["norm1"]
    assert np.all(norm1["scale"] == 1) and np.all(norm1["bias"] == 0)
    classifier = params["classifier"]
    bound = 1 / np.sqrt(model.feature_dim)
    assert np.all(classifier["bias"] == 0) and np.abs(classifier["kernel"]).max() <= bound
    assert np.abs(classifier["kernel"]).max() > 0.9 * bound


def test_converter_reads_legacy_keys_end_to_end(tmp_path, densenet121_state_dict):
    legacy = _to_legacy_keys(densenet121_state_dict)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    src, out = str(tmp_path / "densenet121-a639ec97.pth"), str(tmp_path / "imagenet_densenet121.npz")
    torch.save({k: torch.from_numpy(v) for k, v in legacy.items()}, src)

    meta = convert_teacher.convert(src, out, arch="densenet121")
    assert (meta["arch"], meta["family"], meta["feature_key"]) == ("densenet121", "densenet", "features")
    assert (meta["feature_dim"], meta["num_classes"], meta["num_params"]) == (1024, 1000, 7_978_856)
    assert meta["legacy_keys"] is True and meta["block_config"] == [6, 12, 24, 16]
    assert meta["sha256"] == sha256_file(out) and meta["source_sha256"] == sha256_file(src)

    # Same arrays as converting the modern spelling directly (whose forward matches torch, test above).
    loaded = densenet_weights.load_densenet_variables(out)
    direct = densenet_weights.torch_to_flax(densenet121_state_dict)
    flat_loaded = jax.tree_util.tree_flatten_with_path(loaded)[0]
    flat_direct = dict(jax.tree_util.tree_flatten_with_path(direct)[0])
    assert len(flat_loaded) == len(flat_direct) == 606
    for path, leaf in flat_loaded:
        np.testing.assert_array_equal(leaf, flat_direct[path])
    np.testing.assert_array_equal(
        loaded["params"]["features"]["denseblock3"]["denselayer7"]["conv2"]["kernel"],
        legacy["features.denseblock3.denselayer7.conv.2.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(loaded["params"]["classifier"]["kernel"], legacy["classifier.weight"].T)

    headless = densenet_weights.load_densenet_variables(out, keep_classifier=False)
    assert "classifier" not in headless["params"] and artifact.count_parameters(headless) == 6_953_856
    module = teachers.build_teacher_module(meta)
    assert isinstance(module, DenseNet) and module.num_classes is None and module.feature_dim == 1024

    out2 = str(tmp_path / "trunk.npz")
    meta = convert_teacher.convert(src, out2, arch="densenet121", fmt="torchvision", include_fc=False)
    assert meta["num_classes"] is None and meta["num_params"] == 6_953_856


def test_bad_inputs_are_refused_with_clear_errors(tmp_path, densenet121_state_dict):
    # An artifact of another architecture, or one that claims another family.
    resnet_artifact = str(tmp_path / "r18.npz")
    save_artifact(resnet_artifact, {"params": {"fc": {"bias": np.zeros(2, np.float32)}}}, {"arch": "resnet18"})
    with pytest.raises(ValueError, match=r"r18.npz holds a 'resnet18' but 'densenet121' was expected"):
        densenet_weights.load_densenet_variables(resnet_artifact)
    odd = str(tmp_path / "odd.npz")
    save_artifact(odd, {"params": {}}, {"arch": "densenet121", "family": "resnet"})
    with pytest.raises(ValueError, match="declares family 'resnet', not 'densenet'"):
        densenet_weights.load_densenet_variables(odd)

    # A pickle that needs code execution.
    src, out = str(tmp_path / "evil.pth"), str(tmp_path / "out" / "d121.npz")
    os.makedirs(os.path.dirname(out))
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": NotATensor()}, src)
    with pytest.raises(convert_teacher.CheckpointError, match="arbitrary") as info:
        convert_teacher.convert(src, out, arch="densenet121")
    assert src in str(info.value)
    _assert_nothing_written(out)

    # A ResNet state dict offered as a DenseNet: every offending key and missing variable is listed.
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    with pytest.raises(ValueError) as info:
        convert_teacher.convert(src, out, arch="densenet121")
    message = str(info.value)
    assert src in message and "layer1.0.conv1.weight" in message
    assert "params/features/denseblock1/denselayer1/conv1/kernel" in message
    _assert_nothing_written(out)
    with pytest.raises(ValueError, match="'moco_v2' is not for DenseNets"):
        convert_teacher.convert(src, out, arch="densenet121", fmt="moco_v2")

    # Shape mismatches and ambiguous (both spellings) checkpoints.
    wrong = dict(densenet121_state_dict)
    wrong["features.norm5.running_var"] = np.ones(7, np.float32)
    with pytest.raises(ValueError, match=r"features.norm5.running_var -> batch_stats/features/norm5/var"):
        densenet_weights.torch_to_flax(wrong)
    both = dict(densenet121_state_dict, **{"features.denseblock1.denselayer1.norm.1.weight": np.ones(64)})
    with pytest.raises(ValueError, match="both 'features.denseblock1.denselayer1.norm.1.weight'"):
        densenet_weights.torch_to_flax(both)

    with pytest.raises(ValueError, match="28x28 px is too small"):
        jax.eval_shape(lambda: densenet121().init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)), train=False))


def test_cross_device_batchnorm_matches_full_batch():
    """bn_axis_name='data' under parallel.data_parallel on 8 devices == one device on the whole batch."""
    config = {"growth_rate": 8, "block_config": (1, 1), "num_init_features": 16, "bn_size": 2, "num_classes": 3}
    synced = DenseNet(**config, bn_axis_name=parallel.DATA_AXIS)
    local = DenseNet(**config)
    images = jax.random.normal(jax.random.key(1), (16, 16, 16, 3))
    # Jitted: op-by-op dispatch of even a tiny DenseNet costs seconds on the 8-device CPU backend.
    variables = jax.jit(lambda x: local.init(jax.random.key(0), x, train=False))(images[:1])
    mesh = parallel.make_mesh(8)

    def run(model):
        def per_device(variables, x):
            out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            gathered = jax.tree.map(lambda a: jax.lax.all_gather(a, parallel.DATA_AXIS, tiled=True), out)
            return gathered, parallel.pmean(updates["batch_stats"])

        return parallel.data_parallel(per_device, mesh, num_replicated=1, num_sharded=1)(variables, images)

    reference, reference_updates = jax.jit(lambda v, x: local.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, images
    )
    out, stats = run(synced)
    for key in ("features", "logits"):
        np.testing.assert_allclose(out[key], reference[key], rtol=1e-4, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats, reference_updates["batch_stats"]
    )
    # Without the axis each device normalises its 2 images by their own statistics: visibly different.
    unsynced, _ = run(local)
    assert np.abs(np.asarray(unsynced["features"]) - np.asarray(reference["features"])).max() > 1e-2
