"""Shared by the porting parity tests: print and return how far our features are from the reference."""

import numpy as np


def parity_report(name, ours, reference):
    """Prints parity numbers (visible with pytest -s); returns (max_abs, max_abs / feature scale)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    diff = np.abs(ours - reference)
    scale = float(np.abs(reference).max())
    significant = np.abs(reference) > 1e-3 * scale
    max_rel = float((diff[significant] / np.abs(reference[significant])).max())
    print(
        f"\n[parity] {name}: max|ref|={scale:.4g} max_abs={diff.max():.3e} "
        f"max_abs/scale={diff.max() / scale:.3e} max_rel(|ref|>1e-3*scale)={max_rel:.3e}"
    )
    return float(diff.max()), float(diff.max() / scale)
