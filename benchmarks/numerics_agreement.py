"""How far two computations of the same quantity agree: features, gradients, scalars, FFT dtypes.

Used by benchmarks/mixed_precision_effect.py (bfloat16 vs float32 compute). Metrics per sample i, a = the
approximation, b = the reference: cos(a_i, b_i); relative L2 |a_i - b_i| / |b_i|; |a_i - b_i| over the batch
spread. All in float64, whatever the inputs.
"""

import math
import re

import flax
import jax
import numpy as np

from foprokd_jax.methods.fopro import prompt as fourier_prompt

PROMPT_BANDS = 4  # radial frequency bands (of the FPG's own `band_index`) for the prompt-gradient breakdown


def _rows(approx, exact):
    a, b = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"compare (batch, features) arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(b, axis=-1)
    if np.any(norms == 0):
        raise ValueError(f"reference rows {np.flatnonzero(norms == 0).tolist()} are all zero: no relative error")
    return a, b, norms


def per_sample_cosine(approx, exact) -> np.ndarray:
    """cos(a_i, b_i) per row, in float64."""
    a, b, norms = _rows(approx, exact)
    return np.sum(a * b, -1) / (np.maximum(np.linalg.norm(a, axis=-1), 1e-300) * norms)


def relative_l2(approx, exact) -> np.ndarray:
    """|a_i - b_i| / |b_i| per row, in float64."""
    a, b, norms = _rows(approx, exact)
    return np.linalg.norm(a - b, axis=-1) / norms


def feature_agreement(approx, exact) -> dict:
    """Cosine (mean, min), relative L2 (median, max) and median error over the batch spread, per sample."""
    a, b, _ = _rows(approx, exact)
    cos, rel = per_sample_cosine(a, b), relative_l2(a, b)
    spread = math.sqrt(np.mean(np.sum((b - b.mean(0)) ** 2, -1)))
    err = np.linalg.norm(a - b, axis=-1)
    return dict(
        cos_mean=float(cos.mean()),
        cos_min=float(cos.min()),
        rel_median=float(np.median(rel)),
        rel_max=float(rel.max()),
        spread_rel_median=float(np.median(err) / max(spread, 1e-300)),
    )


def _flat(tree) -> dict:
    return {
        "/".join(map(str, k)): np.asarray(v, np.float64).ravel()
        for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()
    }


def gradient_agreement(approx, exact, negligible: float = 1e-4) -> dict:
    """Cosine and relative L2 of the flattened gradients, and the lowest cosine of any single tensor.

    The per-tensor minimum skips tensors whose reference gradient norm is below `negligible` x the median
    tensor norm: their true gradient is zero and both dtypes return rounding noise (a Dense bias followed by
    train-mode BatchNorm, e.g. the projector's `p_free/linear1/bias`, which the batch mean cancels exactly).
    """
    a, b = _flat(approx), _flat(exact)
    if sorted(a) != sorted(b) or any(a[k].shape != b[k].shape for k in b):
        raise ValueError("the two gradients are not the same tree of the same shapes")
    va, vb = (np.concatenate([t[k] for k in sorted(b)]) for t in (a, b))
    if not np.any(vb):
        raise ValueError("the reference gradient is all zero")
    norms = {k: float(np.linalg.norm(b[k])) for k in b}
    floor = negligible * float(np.median(list(norms.values())))
    skipped = sorted(k for k in b if norms[k] <= floor or not np.any(a[k]))
    leaf_cos = {k: float(a[k] @ b[k] / (np.linalg.norm(a[k]) * norms[k])) for k in sorted(b) if k not in skipped}
    worst = min(leaf_cos, key=leaf_cos.get) if leaf_cos else None
    return dict(
        cos=float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-300)),
        rel=float(np.linalg.norm(va - vb) / np.linalg.norm(vb)),
        min_leaf_cos=leaf_cos.get(worst, float("nan")),
        min_leaf=worst,
        skipped=skipped,
    )


def scalar_relative_error(approx: float, exact: float) -> float:
    return abs(float(approx) - float(exact)) / max(abs(float(exact)), 1e-30)


def band_gradient_agreement(approx, exact, size: int, num_bands: int = PROMPT_BANDS) -> list:
    """The 'spectrum' prompt's gain-logit gradient (H, W//2+1, C) compared on the DC bin (per-channel brightness)
    and on each radial band (`fourier_prompt.band_index`) without DC: cosine, norm ratio |approx| / |exact| and
    the part's share of |exact|. [] for FPG variants without per-bin parameters."""
    if set(exact) != {"gain_logits"}:
        return []
    a, b = (np.asarray(g["gain_logits"], np.float64) for g in (approx, exact))
    bands = fourier_prompt.band_index(size, size, num_bands)
    bands[0, 0] = -1
    rows = []
    for k in range(-1, num_bands):
        ak, bk = a[bands == k].ravel(), b[bands == k].ravel()
        rows.append(
            dict(
                band="DC" if k < 0 else k,
                cos=float(ak @ bk / (np.linalg.norm(ak) * np.linalg.norm(bk))),
                norm_ratio=float(np.linalg.norm(ak) / np.linalg.norm(bk)),
                f32_norm_share=float(np.linalg.norm(bk) / np.linalg.norm(b)),
            )
        )
    return rows


# ------------------------------------------------------------------- what the compiler is handed


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in its equations (pjit, custom_vjp, cond, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def op_dtypes(fn, *args, primitives=("fft",)) -> list:
    """(primitive, fft_type or '', input dtypes, output dtypes) of every matching op in fn's jaxpr."""
    found = []
    for eqn in _eqns(jax.make_jaxpr(fn)(*args).jaxpr):
        if eqn.primitive.name in primitives:
            kind = eqn.params.get("fft_type", "")
            found.append(
                (
                    eqn.primitive.name,
                    getattr(kind, "name", str(kind)),
                    tuple(str(v.aval.dtype) for v in eqn.invars),
                    tuple(str(v.aval.dtype) for v in eqn.outvars),
                )
            )
    return found


def stablehlo_fft_signatures(fn, *args) -> list:
    """The type signature of every `stablehlo.fft` in fn's lowering (what XLA is handed), e.g.
    '(tensor<2x3x32x32xf32>) -> tensor<2x3x32x17xcomplex<f32>>'."""
    text = jax.jit(fn).lower(*args).as_text()
    return re.findall(r"stablehlo\.fft\b.*?:\s*(\(tensor<.*?>\)\s*->\s*tensor<[^\n]*)", text)
