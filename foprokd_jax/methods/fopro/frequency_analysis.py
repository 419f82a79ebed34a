"""Measures a frozen teacher's frequency preferences: ideal radial filters, feature drift, linear probes.

FoPro-KD's premise (docs/reference_semantics.md §0.1) is that "pre-trained models exhibit frequency
preferences". This module makes that measurable without any FPG: low-pass or high-pass the input images with an
ideal radial filter, run the frozen teacher on them and ask two questions per cut-off radius:

* `feature_cosine`: how far does the teacher's embedding move? Mean cosine similarity between the
  features of the filtered and of the unfiltered test images (1 = the teacher ignores the removed band).
* `probe_bacc`: how much class information is left in the embedding of the filtered images? A
  class-balanced multinomial logistic-regression probe is trained on filtered train features and tested
  on equally filtered test features; its balanced accuracy is compared with the unfiltered probe.

A teacher whose probe survives heavy low-passing relies on low frequencies (shape, colour); one whose
features collapse but whose high-pass probe stays up relies on texture.

Frequency convention: the project's one (`foprokd_jax/frequency.py`): for an H x W image with FFT bin
frequencies f_y = fftfreq(H), f_x = fftfreq(W) in cycles per pixel, the normalised radius of a bin is

    r = sqrt((2 f_y)^2 + (2 f_x)^2)

so r = 1 is the Nyquist frequency (0.5 cycles/pixel) along one axis. The corners of the spectrum reach
r = sqrt(2): a high-pass at radius 1.0 still keeps the diagonal corner bins, and only a low-pass at
radius >= sqrt(2) is the identity. On a 32-pixel image the bins are 1/16 = 0.0625 apart in r, so any
low-pass radius below that keeps only the DC term (the mean colour).
"""

import csv
import functools
import math
import os
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from foprokd_jax import frequency, image_norm

KINDS = ("lowpass", "highpass")
BASELINE_KIND = "none"
CSV_COLUMNS = ("kind", "radius", "feature_cosine", "probe_bacc", "n_train", "n_test")


# ----------------------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------------------


def normalised_radius(height: int, width: int) -> np.ndarray:
    """r of every rfft2 bin, shape (height, width // 2 + 1); see the module docstring."""
    return frequency.radial_frequency(height, width).astype(np.float32)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown filter kind {kind!r}; expected one of {KINDS}")


def _filter(images, radius, highpass):
    """Unclipped ideal radial filter of (..., H, W, C) float images; radius and highpass may be traced.

    rfft2/irfft2 instead of fft2/ifft2: the mask depends only on |f|, so it is Hermitian-symmetric and
    the half spectrum is enough, and irfft2 returns a real image with no imaginary residue to drop.
    """
    images = jnp.asarray(images, jnp.float32)
    height, width = images.shape[-3], images.shape[-2]
    r = jnp.asarray(normalised_radius(height, width))
    keep = jnp.where(highpass, r > radius, r <= radius)
    spectrum = jnp.fft.rfft2(images, axes=(-3, -2))
    spectrum = spectrum * keep[:, :, None].astype(spectrum.dtype)
    return jnp.fft.irfft2(spectrum, s=(height, width), axes=(-3, -2)).astype(jnp.float32)


def radial_filter(images_float01, radius, kind: str, clip: bool = True) -> jnp.ndarray:
    """Ideal (binary-mask) radial low-pass or high-pass filter, per channel, of NHWC images in [0, 1].

    'lowpass' keeps bins with r <= radius, 'highpass' those with r > radius, so the two add up to the
    input before clipping. The result is clipped to [0, 1] (like an image fed to the teacher) unless
    `clip=False`; a high-pass image has no DC term, so clipping removes roughly half of it by design.
    `radius` may be a traced scalar, `kind` is static. Works on (H, W, C) or (..., H, W, C).
    """
    _check_kind(kind)
    out = _filter(images_float01, radius, kind == "highpass")
    return jnp.clip(out, 0.0, 1.0) if clip else out


# ----------------------------------------------------------------------------------------------------
# Teacher features
# ----------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("module", "feature_key", "filtered"))
def _features_batch(module: nn.Module, variables, images, radius, highpass, *, feature_key: str, filtered: bool):
    # uint8 travels to the device (4x less traffic) and is scaled here; floats are taken as [0, 1].
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    if filtered:
        x = jnp.clip(_filter(x, radius, highpass), 0.0, 1.0)
    x = image_norm.normalize(x)
    out = module.apply(variables, x, train=False)
    return out[feature_key].astype(jnp.float32)


def teacher_features(
    module: nn.Module,
    variables,
    images_uint8_or_float,
    feature_key: str = "pre_logits",
    batch_size: int = 64,
    radius: Optional[float] = None,
    kind: str = "lowpass",
) -> np.ndarray:
    """(N, D) float32 features of the frozen teacher in inference mode (BN running statistics).

    Images are NHWC, uint8 in [0, 255] or float in [0, 1]; they are ImageNet-normalised here. With
    `radius` set, `radial_filter(images, radius, kind)` is applied on the device first (same compiled
    program for every radius and kind). The last batch is padded to `batch_size` so that one shape is
    compiled; BN in inference mode makes the padding invisible to the real rows.
    """
    images = np.asarray(images_uint8_or_float)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected NHWC RGB images, got shape {images.shape}")
    if radius is not None:
        _check_kind(kind)
    if not np.issubdtype(images.dtype, np.floating):
        if images.dtype != np.uint8:
            raise ValueError(f"integer images must be uint8, got {images.dtype}")
    else:
        images = images.astype(np.float32)
    n = images.shape[0]
    if n == 0:
        raise ValueError("no images to embed")
    batch_size = int(batch_size)
    # Parameters loaded from an artifact are numpy: put them on the device once, not once per batch.
    variables = jax.device_put(variables)
    radius_arg = np.float32(0.0 if radius is None else radius)
    highpass_arg = np.bool_(kind == "highpass")
    chunks = []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        real = batch.shape[0]
        if real < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - real,) + batch.shape[1:], batch.dtype)])
        feats = _features_batch(
            module, variables, batch, radius_arg, highpass_arg, feature_key=feature_key, filtered=radius is not None
        )
        chunks.append(feats[:real])  # stays on the device: dispatch of the next batch is not blocked
    return np.concatenate([np.asarray(c) for c in chunks], axis=0)


def feature_similarity(f_filtered, f_original, eps: float = 1e-8) -> float:
    """Mean over rows of cos(f_filtered[i], f_original[i])."""
    a = np.asarray(f_filtered, np.float64)
    b = np.asarray(f_original, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: {a.shape} vs {b.shape}")
    cos = np.sum(a * b, axis=-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), eps)
    return float(np.mean(cos))


# ----------------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------------


def balanced_accuracy(labels, preds) -> float:
    """Mean recall over the classes present in `labels` (sklearn's balanced_accuracy_score)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    recalls = [float(np.mean(preds[labels == c] == c)) for c in np.unique(labels)]
    return float(np.mean(recalls))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_probe(x, y, num_classes: int, steps: int, lr, l2):
    counts = jnp.bincount(y, length=num_classes).astype(jnp.float32)
    # Each class present in the train set weighs the same in total, whatever its size (long tail).
    class_weight = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0)
    sample_weight = class_weight[y]
    sample_weight = sample_weight / jnp.sum(sample_weight)
    onehot = jax.nn.one_hot(y, num_classes)
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    optimizer = optax.adam(lr)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        ce = -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
        return jnp.sum(sample_weight * ce) + 0.5 * l2 * jnp.sum(p["w"] ** 2)

    def step(carry, _):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params


def linear_probe_bacc(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.05,
    l2: float = 1e-3,
) -> float:
    """Balanced test accuracy of a class-balanced multinomial logistic regression on frozen features.

    Features are standardised with the train mean and std (dimensions constant on train become 0).
    Full-batch Adam from a zero init for `steps` steps, L2 penalty `l2` on the weights (not the bias):
    deterministic, no random state.
    """
    xtr = np.asarray(train_feats, np.float32)
    xte = np.asarray(test_feats, np.float32)
    ytr = np.asarray(train_labels, np.int32)
    yte = np.asarray(test_labels, np.int32)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"feature shapes {xtr.shape} and {xte.shape} are not (N, D) with the same D")
    if len(ytr) != len(xtr) or len(yte) != len(xte):
        raise ValueError("features and labels differ in length")
    for name, y in (("train", ytr), ("test", yte)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes})")
    mean = xtr.mean(axis=0)
    std = xtr.std(axis=0)
    scale = np.where(std > 1e-6 * max(float(std.max(initial=0.0)), 1e-12), 1.0 / np.maximum(std, 1e-12), 0.0)
    xtr = (xtr - mean) * scale
    xte = (xte - mean) * scale
    params = _fit_probe(
        jnp.asarray(xtr), jnp.asarray(ytr), int(num_classes), int(steps), jnp.float32(lr), jnp.float32(l2)
    )
    logits = xte @ np.asarray(params["w"]) + np.asarray(params["b"])
    return balanced_accuracy(yte, np.argmax(logits, axis=-1))


# ----------------------------------------------------------------------------------------------------
# Sweep, CSV, figure
# ----------------------------------------------------------------------------------------------------


def frequency_sweep(
    module: nn.Module,
    variables,
    train_images,
    train_labels,
    test_images,
    test_labels,
    radii: Sequence[float],
    kinds: Sequence[str] = KINDS,
    feature_key: str = "pre_logits",
    batch_size: int = 64,
    num_classes: int = 8,
    probe_steps: int = 300,
    probe_lr: float = 0.05,
    probe_l2: float = 1e-3,
    log: Optional[Callable[[str], None]] = None,
) -> list:
    """One row per (kind, radius), after a baseline row (kind 'none', radius NaN, cosine 1).

    Train and test images are filtered identically; `feature_cosine` compares filtered with unfiltered
    test features, `probe_bacc` is the balanced test accuracy of a probe trained on the filtered train
    features. Rows: {kind, radius, feature_cosine, probe_bacc, n_train, n_test}.
    """
    for kind in kinds:
        _check_kind(kind)
    radii = [float(r) for r in radii]
    if any(not math.isfinite(r) or r < 0 for r in radii):
        raise ValueError(f"radii must be finite and >= 0, got {radii}")
    log = log or (lambda message: None)
    embed = functools.partial(teacher_features, module, variables, feature_key=feature_key, batch_size=batch_size)
    probe = functools.partial(
        linear_probe_bacc,
        train_labels=train_labels,
        test_labels=test_labels,
        num_classes=num_classes,
        steps=probe_steps,
        lr=probe_lr,
        l2=probe_l2,
    )
    sizes = {"n_train": int(len(train_labels)), "n_test": int(len(test_labels))}

    base_train, base_test = embed(train_images), embed(test_images)
    rows = [
        {
            "kind": BASELINE_KIND,
            "radius": math.nan,
            "feature_cosine": 1.0,
            "probe_bacc": probe(base_train, test_feats=base_test),
            **sizes,
        }
    ]
    log(f"unfiltered: probe bacc {rows[0]['probe_bacc']:.4f}")
    for kind in kinds:
        for radius in radii:
            train_feats = embed(train_images, radius=radius, kind=kind)
            test_feats = embed(test_images, radius=radius, kind=kind)
            row = {
                "kind": kind,
                "radius": radius,
                "feature_cosine": feature_similarity(test_feats, base_test),
                "probe_bacc": probe(train_feats, test_feats=test_feats),
                **sizes,
            }
            rows.append(row)
            log(f"{kind} r={radius:g}: feature cosine {row['feature_cosine']:.4f}, probe bacc {row['probe_bacc']:.4f}")
    return rows


def write_sweep_csv(rows: Sequence[dict], path: str) -> str:
    """CSV with CSV_COLUMNS; the baseline's radius is written as an empty cell."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            out = dict(row)
            radius = out.get("radius")
            out["radius"] = "" if radius is None or not math.isfinite(radius) else f"{radius:g}"
            for key in ("feature_cosine", "probe_bacc"):
                out[key] = f"{float(out[key]):.6f}"
            writer.writerow(out)
    return path


def format_sweep_table(rows: Sequence[dict]) -> str:
    lines = [f"{'kind':10s}{'radius':>8s}{'feature_cos':>13s}{'probe_bacc':>12s}", "-" * 43]
    for row in rows:
        radius = row["radius"]
        radius = "-" if not math.isfinite(radius) else f"{radius:g}"
        lines.append(f"{row['kind']:10s}{radius:>8s}{row['feature_cosine']:13.4f}{row['probe_bacc']:12.4f}")
    return "\n".join(lines)


_KIND_STYLE = {
    "lowpass": dict(color="#4c72b0", marker="o", label="low-pass (keep r <= radius)"),
    "highpass": dict(color="#c44e52", marker="s", label="high-pass (keep r > radius)"),
}


def plot_frequency_sweep(
    rows: Sequence[dict], out_png: str, title: str = "Teacher frequency preferences", chance: Optional[float] = None
) -> str:
    """Two panels against the cut-off radius: feature cosine, and probe balanced accuracy.

    The unfiltered probe is a dashed line on the right panel; `chance` (e.g. 1/8) a dotted one.
    """
    # Figure + Agg canvas, never pyplot (as in plots.py): no display needed, no global backend change.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    cos_axis, bacc_axis = figure.subplots(1, 2)
    baseline = next((r for r in rows if r["kind"] == BASELINE_KIND), None)
    for kind in KINDS:
        kind_rows = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["radius"])
        if not kind_rows:
            continue
        radii = [r["radius"] for r in kind_rows]
        cos_axis.plot(radii, [r["feature_cosine"] for r in kind_rows], **_KIND_STYLE[kind])
        bacc_axis.plot(radii, [r["probe_bacc"] for r in kind_rows], **_KIND_STYLE[kind])
    cos_axis.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    if baseline is not None:
        bacc_axis.axhline(
            baseline["probe_bacc"],
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"unfiltered ({baseline['probe_bacc']:.3f})",
        )
    if chance is not None:
        bacc_axis.axhline(chance, color="gray", linestyle=":", linewidth=1, label=f"chance ({chance:.3f})")
    for axis in (cos_axis, bacc_axis):
        axis.axvline(1.0, color="lightgray", linewidth=0.8, zorder=0)  # Nyquist along an axis
        axis.set_xlabel("cut-off radius r (1 = Nyquist along an axis)")
        axis.grid(True, alpha=0.3)
        axis.set_xlim(left=0.0)
    cos_axis.set_ylabel("mean cosine(filtered, original) teacher features")
    cos_axis.set_title("Feature drift (test images)", fontsize=10)
    bacc_axis.set_ylabel("linear-probe balanced accuracy")
    bacc_axis.set_title("Class information left (filtered train -> filtered test)", fontsize=10)
    bacc_axis.set_ylim(0.0, 1.02)
    low = min(r["feature_cosine"] for r in rows) if rows else 0.0
    cos_axis.set_ylim(max(-1.02, min(low, 0.9) - 0.05), 1.02)
    cos_axis.legend(fontsize=8, loc="best")
    bacc_axis.legend(fontsize=8, loc="best")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out_png, dpi=150, bbox_inches="tight")
    return out_png
