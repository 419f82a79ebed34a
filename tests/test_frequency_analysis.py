"""Frequency analysis: filter properties, linear probe, the sweep on a tiny teacher, the CLI end to end."""

import csv
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foprokd_jax.methods.fopro import frequency_analysis as fa
from foprokd_jax.models.build import teacher_from_artifact
from foprokd_jax.models.resnet import ResNet
from foprokd_jax.porting.artifact import save_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
TINY = dict(stage_sizes=(1, 1, 1, 1), block="basic", width=8)


def _images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def _sinusoid(cycles_x):
    """0.5 + 0.4 sin(2 pi k x / W): one frequency at normalised radius 2k / W, stays inside [0, 1]."""
    x = np.arange(SIZE, dtype=np.float32)
    row = 0.5 + 0.4 * np.sin(2 * np.pi * cycles_x * x / SIZE)
    return np.broadcast_to(row[None, :, None], (SIZE, SIZE, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------------


def test_lowpass_beyond_the_corners_is_the_identity():
    x = _images()
    np.testing.assert_allclose(fa.radial_filter(x, math.sqrt(2) + 1e-3, "lowpass"), x, atol=1e-5)


def test_lowpass_at_zero_keeps_only_the_channel_mean():
    x = _images()
    out = np.asarray(fa.radial_filter(x, 0.0, "lowpass"))
    np.testing.assert_allclose(out, np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape), atol=1e-5)


@pytest.mark.parametrize("radius", [0.0, 0.3, 1.0])
def test_lowpass_plus_highpass_is_the_original_before_clipping(radius):
    x = _images()
    low = fa.radial_filter(x, radius, "lowpass", clip=False)
    high = fa.radial_filter(x, radius, "highpass", clip=False)
    np.testing.assert_allclose(np.asarray(low + high), x, atol=1e-5)
    clipped = np.asarray(fa.radial_filter(x, radius, "highpass"))
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


def test_sinusoid_kept_above_its_radius_and_removed_below():
    image = _sinusoid(4)  # 4 cycles over 32 px = 0.125 cycles/px = radius 0.25
    np.testing.assert_allclose(fa.radial_filter(image, 0.3, "lowpass"), image, atol=1e-5)
    np.testing.assert_allclose(fa.radial_filter(image, 0.2, "lowpass"), np.full_like(image, 0.5), atol=1e-5)
    # High-pass is the complement: the wave without its mean.
    np.testing.assert_allclose(fa.radial_filter(image, 0.2, "highpass", clip=False), image - 0.5, atol=1e-5)
    np.testing.assert_allclose(fa.radial_filter(image, 0.3, "highpass", clip=False), 0.0, atol=1e-5)


def test_filter_accepts_a_traced_radius_and_rejects_unknown_kinds():
    x = _images(1)
    jitted = jax.jit(lambda img, r: fa.radial_filter(img, r, "lowpass"))
    np.testing.assert_allclose(jitted(x, 0.4), fa.radial_filter(x, 0.4, "lowpass"), atol=1e-6)
    with pytest.raises(ValueError, match="bandpass"):
        fa.radial_filter(x, 0.4, "bandpass")


# ---------------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------------


def _clusters(labels, dim, seed, spread=3.0):
    """Gaussian clusters around fixed class centres (the same centres for every seed)."""
    centres = np.random.default_rng(99).normal(size=(int(np.max(labels)) + 1, dim)) * spread
    return (centres[labels] + np.random.default_rng(seed).normal(size=(len(labels), dim))).astype(np.float32)


def test_probe_separates_separable_features_despite_the_long_tail():
    # Long-tailed train labels, as in ISIC (class c has weight 2^-c); a balanced test set.
    p = 0.5 ** np.arange(4)
    train_y = np.random.default_rng(0).choice(4, size=300, p=p / p.sum())
    test_y = np.repeat(np.arange(4), 50)
    train_x, test_x = _clusters(train_y, 16, seed=1), _clusters(test_y, 16, seed=2)
    bacc = fa.linear_probe_bacc(train_x, train_y, test_x, test_y, num_classes=4)
    assert bacc > 0.95
    # Deterministic: the same call gives the same number.
    assert fa.linear_probe_bacc(train_x, train_y, test_x, test_y, num_classes=4) == bacc


def test_probe_is_at_chance_on_random_labels():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(1400, 32)).astype(np.float32)
    labels = rng.integers(0, 4, size=1400)
    bacc = fa.linear_probe_bacc(feats[:600], labels[:600], feats[600:], labels[600:], num_classes=4)
    assert abs(bacc - 0.25) < 0.07


def test_balanced_accuracy_ignores_absent_classes():
    assert fa.balanced_accuracy([0, 0, 1, 1], [0, 0, 1, 0]) == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------------
# Teacher features and the sweep
# ---------------------------------------------------------------------------------------------------


def _random_variables(module):
    """He-scaled random weights from the init's shapes: jax.eval_shape only traces, while compiling
    the real init of even a tiny ResNet takes several seconds on a 2-core CPU."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=leaf.shape).astype(np.float32) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A tiny random ResNet saved in the real artifact format and loaded the way the CLI loads it."""
    path = str(tmp_path_factory.mktemp("teacher") / "tiny.npz")
    module = ResNet(**TINY)
    save_artifact(
        path,
        _random_variables(module),
        {
            "arch": "tiny_resnet",
            "feature_dim": module.feature_dim,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        },
    )
    module, variables, _ = teacher_from_artifact(path, "tiny_resnet")
    return path, module, variables


def _coloured(n_per_class, num_classes, seed):
    """uint8 images whose class sets the mean colour, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    colours = np.random.default_rng(7).uniform(40, 215, size=(num_classes, 3))
    images = colours[labels][:, None, None, :] + rng.normal(0, 25, size=(len(labels), SIZE, SIZE, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_teacher_features_batching_and_input_types(tiny_teacher):
    _, module, variables = tiny_teacher
    images, _ = _coloured(5, 2, seed=0)  # 10 images: batches of 4 leave a padded remainder of 2
    whole = fa.teacher_features(module, variables, images, batch_size=16)
    batched = fa.teacher_features(module, variables, images, batch_size=4)
    as_float = fa.teacher_features(module, variables, images.astype(np.float32) / 255.0, batch_size=4)
    assert whole.shape == (10, module.feature_dim)
    np.testing.assert_allclose(batched, whole, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(as_float, whole, rtol=1e-4, atol=1e-5)
    filtered = fa.teacher_features(module, variables, images, batch_size=4, radius=0.0, kind="lowpass")
    assert not np.allclose(filtered, whole)


def test_sweep_rows_csv_and_plot(tiny_teacher, tmp_path):
    _, module, variables = tiny_teacher
    train_images, train_labels = _coloured(6, 3, seed=1)
    test_images, test_labels = _coloured(4, 3, seed=2)
    radii = (0.0, 0.5, 1.5)
    rows = fa.frequency_sweep(
        module,
        variables,
        train_images,
        train_labels,
        test_images,
        test_labels,
        radii=radii,
        batch_size=8,
        num_classes=3,
        probe_steps=50,
    )
    assert [(r["kind"], r["radius"]) for r in rows[1:]] == [(k, r) for k in fa.KINDS for r in radii]
    assert rows[0]["kind"] == "none" and math.isnan(rows[0]["radius"]) and rows[0]["feature_cosine"] == 1.0
    for row in rows:
        assert -1.0 - 1e-6 <= row["feature_cosine"] <= 1.0 + 1e-6
        assert 0.0 <= row["probe_bacc"] <= 1.0
        assert (row["n_train"], row["n_test"]) == (18, 12)
    identity = next(r for r in rows if r["kind"] == "lowpass" and r["radius"] == 1.5)
    assert identity["feature_cosine"] > 0.9999
    assert rows[0]["probe_bacc"] > 0.9  # the colour is the class: an easy probe

    csv_path = fa.write_sweep_csv(rows, str(tmp_path / "sweep.csv"))
    with open(csv_path, newline="") as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows) and read[0]["radius"] == "" and read[1]["radius"] == "0"
    png = fa.plot_frequency_sweep(rows, str(tmp_path / "sweep.png"), title="tiny", chance=1 / 3)
    assert os.path.getsize(png) > 10_000
    assert "highpass" in fa.format_sweep_table(rows)


def test_sweep_rejects_bad_radii(tiny_teacher):
    _, module, variables = tiny_teacher
    images, labels = _coloured(2, 2, seed=0)
    with pytest.raises(ValueError, match="radii"):
        fa.frequency_sweep(module, variables, images, labels, images, labels, radii=(-0.1,), num_classes=2)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _cli(args, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "analyze_frequency.py"), *args],
        capture_output=True,
        text=True,
        cwd=str(cwd),
        timeout=300,
        check=False,
    )


def test_cli_demo_end_to_end(tmp_path):
    data = tmp_path / "demo"
    out = tmp_path / "out"
    # The demo generates its data here; its teacher is pre-made (same format, tiny) because
    # demo.ensure_demo_teacher's eager init alone takes 10-20 s on a 2-core CPU. ensure_demo_teacher
    # then finds it and keeps it, so the test also shows that --teacher_artifact reaches the demo config.
    module = ResNet(**TINY)
    save_artifact(
        str(data / "teacher.npz"),
        _random_variables(module),
        {
            "arch": "demo_random_resnet",
            "feature_dim": module.feature_dim,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        },
    )
    result = _cli(
        [
            "--demo",
            f"--image_root={data}",
            f"--split_dir={data / 'splits'}",
            f"--prepared_dir={data / 'tfds'}",
            f"--teacher_artifact={data / 'teacher.npz'}",
            "--image_size=32",
            "--max_train_per_class=6",
            "--max_eval_per_class=4",
            "--radii=0.1,0.5",
            "--probe_steps=50",
            f"--out_dir={out}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (data / "splits" / "train_skin1_0.01.csv").exists()
    assert not (tmp_path / "data").exists()  # nothing went to the default demo paths
    with open(out / "frequency_sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["radius"]) for r in rows] == [
        ("none", ""),
        ("lowpass", "0.1"),
        ("lowpass", "0.5"),
        ("highpass", "0.1"),
        ("highpass", "0.5"),
    ]
    assert all(0.0 <= float(r["probe_bacc"]) <= 1.0 for r in rows)
    assert all(int(r["n_test"]) == 4 * 8 for r in rows)
    assert os.path.getsize(out / "frequency_sweep.png") > 10_000
    assert "probe_bacc" in result.stdout and "highpass" in result.stdout


def test_cli_missing_teacher_is_one_clear_line(tmp_path):
    missing = tmp_path / "nope" / "teacher.npz"
    result = _cli([f"--teacher_artifact={missing}", "--teacher_arch=resnet50", f"--out_dir={tmp_path}"], tmp_path)
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "frequency_sweep.csv")
