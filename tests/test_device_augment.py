"""The device "skin" augmentation (data/device_augment.py, methods/device_augmentation.py; issue 18).

- fixed parameters: each operation against torchvision's PIL backend (the reference); colour ops bit-exact,
  geometry within a stated tolerance (GEOMETRY_TOLERANCE: float32 matrix vs Pillow's double);
- Pillow's RGB <-> HSV conversions bit-exact over all 2^24 inputs;
- parameter distributions: moments of many device draws against those the host version draws (data/augment.py);
- keys: a function of (seed, step, global index) only: 1 device = 8 devices bit for bit, batch composition free;
- resume: the augmented train step continued from a host copy of its state equals the uninterrupted run bitwise.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from foprokd_jax import parallel
from foprokd_jax.data import augment as host
from foprokd_jax.data import device_augment as dev
from foprokd_jax.methods import device_augmentation

# Geometry: fraction of output pixels allowed to read another source pixel than torchvision/Pillow. The float32
# matrix (and, vmapped on CPU, XLA's vectorised sin/cos) can move Pillow's 16.16 fixed-point coefficients by one
# unit; measured: 0 for single images here, <= 0.31 % of the pixels for the vmapped drawn batch at 40 px, and
# docs/performance.md §4 at 224 px. Colour ops are exact.
GEOMETRY_TOLERANCE = 5e-3


def _image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack(
        [128 + 100 * np.sin(xx / 7.0), 128 + 90 * np.cos(yy / 9.0), 128 + 80 * np.sin((xx + yy) / 13.0)], -1
    )
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _tv():
    from foprokd_jax.porting.torch_compat import import_torchvision

    import_torchvision()
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    return F, InterpolationMode.NEAREST


def _f32(x):
    return float(np.float32(x))


def _differing(a, b):
    return float(np.mean(np.any(np.asarray(a) != np.asarray(b), axis=-1)))


def test_geometry_matches_torchvision_within_tolerance():
    F, nearest = _tv()
    img = _image()
    pil, x, s = Image.fromarray(img), jnp.asarray(img), img.shape[0]
    cases = []
    # Not 0.95 = 19/20 or 1.2 = 6/5: with a rational scale some source coordinates are exact integers, and
    # Pillow's accumulated double sum may land on either side (at 64 px, 0.95 moves one row and one column).
    for scale in (0.9613, 1.0731, 1.1987):
        ref = F.affine(pil, angle=0.0, translate=[0, 0], scale=_f32(scale), shear=[0.0, 0.0], interpolation=nearest)
        cases.append(("scale", ref, dev.affine_inverse_matrix(s, s, scale=_f32(scale)), GEOMETRY_TOLERANCE))
    for tx in (-3, 2):
        ref = F.affine(pil, angle=0.0, translate=[tx, 0], scale=1.0, shear=[0.0, 0.0], interpolation=nearest, fill=0)
        cases.append(("translate", ref, dev.affine_inverse_matrix(s, s, translate=(float(tx), 0.0)), 0.0))  # exact
    for angle in (-44.3, 12.7, 30.0):
        ref = F.rotate(pil, _f32(angle), nearest, fill=0)
        cases.append(("rotate", ref, dev.rotate_inverse_matrix(s, s, _f32(angle)), GEOMETRY_TOLERANCE))
    ref = F.affine(pil, angle=20.0, translate=[3, -2], scale=_f32(1.13), shear=[10.0, 5.0], interpolation=nearest)
    cases.append(
        ("shear", ref, dev.affine_inverse_matrix(s, s, 20.0, (3.0, -2.0), _f32(1.13), (10.0, 5.0)), GEOMETRY_TOLERANCE)
    )
    for name, ref, matrix, tolerance in cases:
        assert _differing(dev.warp_nearest(x, matrix), ref) <= tolerance, name


def test_colour_ops_match_torchvision_exactly():
    F, _ = _tv()
    img = _image(48, seed=1)
    pil, x = Image.fromarray(img), jnp.asarray(img, jnp.float32)
    for factor in map(_f32, (0.75, 0.9317, 1.2, 1.25)):
        np.testing.assert_array_equal(dev.adjust_brightness(x, factor), F.adjust_brightness(pil, factor))
        np.testing.assert_array_equal(dev.adjust_contrast(x, factor), F.adjust_contrast(pil, factor))
        np.testing.assert_array_equal(dev.adjust_saturation(x, factor), F.adjust_saturation(pil, factor))
    for hue in map(_f32, (-0.01, -0.004, 0.0, 0.006, 0.0099)):
        np.testing.assert_array_equal(dev.adjust_hue(x, hue), F.adjust_hue(pil, hue))


def test_hsv_conversions_match_pillow_for_every_colour():
    """All 2^24 RGB colours through rgb2hsv and all 2^24 HSV triples through hsv2rgb (Pillow's C code)."""
    codes = np.arange(2**24, dtype=np.uint32)
    grid = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    to_hsv = jax.jit(lambda rgb: jnp.stack(dev.rgb_to_hsv(rgb), -1).astype(jnp.uint8))
    to_rgb = jax.jit(lambda hsv: dev.hsv_to_rgb(hsv[..., 0], hsv[..., 1], hsv[..., 2]).astype(jnp.uint8))
    for rows in np.split(np.arange(4096), 4):  # 4 chunks: bounded memory
        part = grid[rows]
        ref_hsv = np.asarray(Image.fromarray(part).convert("HSV"))
        np.testing.assert_array_equal(to_hsv(jnp.asarray(part, jnp.float32)), ref_hsv)
        ref_rgb = np.asarray(Image.fromarray(part, "HSV").convert("RGB"))
        np.testing.assert_array_equal(to_rgb(jnp.asarray(part, jnp.float32)), ref_rgb)


def _torchvision_chain(F, nearest, img, p):
    """The reference chain with the parameters `p` of `dev.draw_params` (one example, numpy values)."""
    pil = Image.fromarray(img)
    choice = int(p["choice"])
    if choice == 0:
        pil = F.affine(pil, 0.0, [0, 0], float(p["scale"]), [0.0, 0.0], interpolation=nearest, fill=0)
    elif choice == 1:
        pil = F.affine(pil, 0.0, [int(p["tx"]), 0], 1.0, [0.0, 0.0], interpolation=nearest, fill=0)
    else:
        pil = F.rotate(pil, float(p["angle"]), nearest, fill=0)
    ops = (
        lambda im: F.adjust_brightness(im, float(p["brightness"])),
        lambda im: F.adjust_contrast(im, float(p["contrast"])),
        lambda im: F.adjust_saturation(im, float(p["saturation"])),
        lambda im: F.adjust_hue(im, float(p["hue"])),
    )
    for op in np.asarray(p["order"]):
        pil = ops[int(op)](pil)
    out = np.asarray(pil)
    out = out[:, ::-1] if p["flips"][0] else out
    return out[::-1] if p["flips"][1] else out


def test_whole_chain_with_drawn_parameters_matches_torchvision():
    F, nearest = _tv()
    img = _image(40, seed=2)
    keys = [dev.example_key(3, 5, i) for i in range(12)]
    params = [jax.tree.map(np.asarray, dev.draw_params(k, 40, 40)) for k in keys]
    assert {int(p["choice"]) for p in params} == {0, 1, 2}
    ours = jax.jit(jax.vmap(dev.augment_image, in_axes=(None, 0)))(
        jnp.asarray(img), jax.vmap(lambda k: dev.draw_params(k, 40, 40))(jnp.stack(keys))
    )
    for p, out in zip(params, np.asarray(ours)):
        ref = _torchvision_chain(F, nearest, img, p)
        # A geometry mismatch moves a pixel; the colour ops then act on it exactly as on the reference.
        assert _differing(out, ref) <= GEOMETRY_TOLERANCE, p


class _RecordingRng:
    """A numpy Generator that records every draw the host augmentation makes, in order."""

    def __init__(self, seed):
        self.rng, self.calls = np.random.default_rng(seed), []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            value = getattr(self.rng, name)(*args, **kwargs)
            self.calls.append((name, value))
            return value

        return call


def _host_params(n, size):
    """n draws of the host version's parameters, parsed from its rng calls (data/augment.py's order)."""
    rng, img, draws = _RecordingRng(0), np.zeros((size, size, 3), np.uint8), []
    for _ in range(n):
        rng.calls = []
        host.train_augment(img, rng)
        (_, choice), (_, geometric), (_, order), *factors, (_, h_flip), (_, v_flip) = rng.calls
        b, c, s, h = (float(v) for _, v in factors)
        geometric = float(geometric)
        tx = int(round(geometric)) if choice == 1 else None
        draws.append(
            dict(
                choice=int(choice),
                geometric=geometric,
                tx=tx,
                order=tuple(order),
                brightness=b,
                contrast=c,
                saturation=s,
                hue=h,
                h_flip=h_flip < 0.5,
                v_flip=v_flip < 0.5,
            )
        )
    return draws


def _close(a, b, name):
    """Means of two samples agree within 4.5 standard errors; for non-binary samples the variances too (the
    normal-theory standard error 2 sigma^4 / n, conservative for these uniform draws)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    se = np.sqrt(a.var() / len(a) + b.var() / len(b)) + 1e-12
    assert abs(a.mean() - b.mean()) <= 4.5 * se, (name, a.mean(), b.mean(), se)
    if set(np.unique(a)) <= {0.0, 1.0}:
        return  # a Bernoulli variance is fixed by its mean
    se_var = np.sqrt(2 * a.var() ** 2 / len(a) + 2 * b.var() ** 2 / len(b)) + 1e-12
    assert abs(a.var() - b.var()) <= 4.5 * se_var, (name, a.var(), b.var(), se_var)


def test_parameter_distributions_match_the_host_version():
    n, size = 3000, 40
    h = _host_params(n, size)
    keys = jax.vmap(lambda i: dev.example_key(11, 7, i))(jnp.arange(n))
    d = jax.tree.map(np.asarray, jax.vmap(lambda k: dev.draw_params(k, size, size))(keys))
    for c in range(3):
        _close([p["choice"] == c for p in h], d["choice"] == c, f"choice {c}")
    _close([p["geometric"] for p in h if p["choice"] == 0], d["scale"], "scale")
    _close([p["tx"] for p in h if p["choice"] == 1], d["tx"], "tx")
    assert set(np.unique(d["tx"]).tolist()) == {p["tx"] for p in h if p["choice"] == 1} == set(range(-2, 3))
    _close([p["geometric"] for p in h if p["choice"] == 2], d["angle"], "angle")
    for name in ("brightness", "contrast", "saturation", "hue"):
        _close([p[name] for p in h], d[name], name)
    _close([p["h_flip"] for p in h], d["flips"][:, 0], "h_flip")
    _close([p["v_flip"] for p in h], d["flips"][:, 1], "v_flip")
    host_orders = collections.Counter(p["order"] for p in h)
    dev_orders = collections.Counter(tuple(o) for o in d["order"].tolist())
    assert len(host_orders) == len(dev_orders) == 24
    for perm in host_orders:  # each of the 24 orders ~ Binomial(n, 1/24) in both
        _close(np.arange(n) < host_orders[perm], np.arange(n) < dev_orders[perm], f"order {perm}")


def _global(images, mesh):
    return jax.device_put(images, parallel.batch_sharded(mesh))


def test_augmentation_depends_on_seed_step_and_global_index_only():
    images = np.stack([_image(16, seed=i) for i in range(8)])
    outs, augmenters = {}, {}
    for n in (1, 8):
        mesh = parallel.make_mesh(n)
        augmenters[n] = jax.jit(device_augmentation.make_batch_augmenter(mesh, seed=4))
        outs[n] = np.asarray(augmenters[n](jnp.int32(9), _global(images, mesh)))
    np.testing.assert_array_equal(outs[1], outs[8])
    # Row i is example_key(seed, step, i) applied to that image, whatever else is in the batch.
    alone = jax.jit(dev.augment_batch, static_argnums=1)(jnp.asarray(images[5:6]), 4, 9, 5)
    np.testing.assert_array_equal(outs[1][5], np.asarray(alone)[0])
    other_step = np.asarray(augmenters[8](jnp.int32(10), _global(images, parallel.make_mesh(8))))
    other_seed = np.asarray(jax.jit(dev.augment_batch, static_argnums=1)(jnp.asarray(images), 5, 9))
    assert (other_step != outs[1]).any() and (other_seed != outs[1]).any()
    assert (outs[1] != images).any()


@pytest.mark.parametrize("value,expected", [("auto", "host"), ("host", "host"), ("device", "device")])
def test_augment_on_resolution(value, expected):
    assert device_augmentation.resolve_augment_on(value, backend="cpu") == expected
    assert device_augmentation.resolve_augment_on("auto", backend="gpu") == "device"
    assert device_augmentation.resolve_augment_on("auto", backend="tpu") == "device"
    with pytest.raises(ValueError, match="config.input.augment_on='gpu'"):
        device_augmentation.resolve_augment_on("gpu")


def _tiny_step(mesh):
    """A one-layer model's data-parallel step that reads the uint8 images, behind the device augmentation."""
    import optax

    from foprokd_jax.state import TrainState

    optimizer = optax.adam(1e-2)

    def per_device(state, frozen, batch):
        def loss_fn(w):
            x = batch["image"].astype(jnp.float32).reshape(batch["image"].shape[0], -1) / 255.0
            logits = x @ w
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = parallel.pmean(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        return new, {"loss": parallel.pmean(loss)}

    step = parallel.data_parallel(per_device, mesh, num_replicated=2, num_sharded=1, donate_first=True)
    params = jnp.asarray(np.random.default_rng(0).normal(0, 0.01, (12 * 12 * 3, 3)), jnp.float32)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=optimizer.init(params))
    # A host copy: replicating it twice must not alias buffers that the donating step deletes.
    return device_augmentation.with_device_augmentation(step, mesh, seed=0), jax.tree.map(np.asarray, state)


def test_resume_is_bitwise_and_device_count_free():
    batch = {"image": np.stack([_image(12, seed=i) for i in range(8)]), "label": np.arange(8, dtype=np.int32) % 3}
    finals = {}
    for n in (1, 8):
        mesh = parallel.make_mesh(n)
        step, state0 = _tiny_step(mesh)
        gb = parallel.host_batch_to_global(batch, mesh)
        state = parallel.replicate(state0, mesh)
        losses = []
        for _ in range(4):
            state, m = step(state, {}, gb)
            losses.append(float(m["loss"]))
        # Resume: the state of step 2 through the host (what a checkpoint holds), then steps 3-4 again.
        resumed = parallel.replicate(state0, mesh)
        for _ in range(2):
            resumed, _ = step(resumed, {}, gb)
        resumed = parallel.replicate(jax.tree.map(np.asarray, jax.device_get(resumed)), mesh)
        for _ in range(2):
            resumed, m = step(resumed, {}, gb)
        np.testing.assert_array_equal(np.asarray(resumed.params), np.asarray(state.params))
        assert float(m["loss"]) == losses[-1]
        finals[n] = (np.asarray(state.params), losses)
    np.testing.assert_allclose(finals[1][0], finals[8][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(finals[1][1], finals[8][1], rtol=1e-5)


def test_bsm_with_augment_on_device_reads_raw_images_and_augments_in_the_step(tmp_path):
    """The wiring (methods/resnet_student.py): 'device' ships unaugmented batches and wraps the train step."""
    from configs import isic
    from foprokd_jax import methods
    from foprokd_jax.data import registry
    from tests import cli_runs

    root = cli_runs.write_tiny_isic(str(tmp_path))
    built = {}
    for augment_on in ("device", "host"):
        config = isic.get_config("method=bsm,runlocal")
        config.unlock()
        config.input.update(dict(image_root=root, split_dir=f"{root}/splits", prepared_dir=f"{root}/tfds"))
        config.input.augment_on = augment_on
        dataset = registry.load_dataset(config.input)
        mesh = parallel.make_mesh(2)
        built[augment_on] = (methods.build_method(config, mesh, dataset, steps_per_epoch=4), dataset, mesh)
    parts, dataset, mesh = built["device"]
    raw = next(parts.train_iterator)
    augmented_on_host = next(built["host"][0].train_iterator)
    # Same examples in the same order; only the host run augmented them.
    np.testing.assert_array_equal(raw["label"], augmented_on_host["label"])
    train_images = {int(i): e["image"] for i, e in enumerate(dataset.sources["train"])}
    assert any((raw["image"][0] == image).all() for image in train_images.values())
    assert not any((augmented_on_host["image"][0] == image).all() for image in train_images.values())
    state, metrics = parts.train_step(parts.state, parts.frozen, parallel.host_batch_to_global(raw, mesh))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
