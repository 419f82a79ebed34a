"""Procedural source and target tasks of the transfer benchmark (protocol: docs/evidence.md §1.1-§1.2).

A class is a combination of structural factors: the exponent of a 1/f^alpha noise background, a foreground
shape, the orientation and frequency band of a grating drawn on the shape, and a hue family. The source task
uses 32 combinations; the target task uses 8 combinations that the source task does not, so the target
classes differ in structure the source teacher has seen, but are new classes. Nuisance variation (position,
scale, rotation jitter, brightness/contrast, colour cast, noise) is drawn per image; the target adds a
background tint (a domain shift).

The 1/f^alpha texture follows the classic power-law model of natural-image spectra (Field, "Relations between
the statistics of natural images and the response properties of cortical cells", JOSA A 1987,
https://doi.org/10.1364/JOSAA.4.002379).
"""

from __future__ import annotations

import itertools

import numpy as np

ALPHAS = (1.0, 2.0)
SHAPES = ("disc", "square", "triangle", "ring")
ORIENTATIONS_DEG = (0.0, 45.0, 90.0, 135.0)
BANDS = ("low", "high")
# Cycles per image of the grating in each band at 32 px (low well below, high near the Nyquist half).
BAND_CYCLES = {"low": 3.0, "high": 10.0}
HUES = ((1.0, 0.35, 0.3), (0.3, 0.9, 0.35), (0.3, 0.45, 1.0), (0.95, 0.85, 0.3))
TARGET_TINT = np.array([0.08, -0.03, 0.05], np.float32)


def all_factor_combinations() -> list:
    """Every (alpha, shape, orientation, band, hue) combination, in a fixed order."""
    return list(
        itertools.product(
            range(len(ALPHAS)), range(len(SHAPES)), range(len(ORIENTATIONS_DEG)), range(len(BANDS)), range(len(HUES))
        )
    )


def task_classes(num_source: int = 32, num_target: int = 8, seed: int = 0) -> tuple:
    """Disjoint source and target class definitions drawn from the factor combinations with a fixed seed."""
    combos = all_factor_combinations()
    if num_source + num_target > len(combos):
        raise ValueError(f"{num_source}+{num_target} classes exceed the {len(combos)} factor combinations")
    order = np.random.default_rng(seed).permutation(len(combos))
    chosen = [combos[i] for i in order[: num_source + num_target]]
    return chosen[:num_source], chosen[num_source:]


def power_law_noise(size: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """A size x size texture with amplitude spectrum ~ 1/f^(alpha/2) (power ~ 1/f^alpha), scaled to [0, 1]."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius ** (alpha / 2)
    spectrum[0, 0] = 0.0
    field = np.real(np.fft.ifft2(spectrum))
    return (field - field.min()) / (np.ptp(field) + 1e-8)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Mask of a unit-sized shape in coordinates already centred, scaled and rotated."""
    if shape == "disc":
        return xx**2 + yy**2 <= 1.0
    if shape == "square":
        return (np.abs(xx) <= 0.85) & (np.abs(yy) <= 0.85)
    if shape == "triangle":
        return (yy <= 0.8) & (yy >= 1.7 * np.abs(xx) - 0.9)
    if shape == "ring":
        r2 = xx**2 + yy**2
        return (r2 <= 1.0) & (r2 >= 0.45)
    raise ValueError(f"unknown shape {shape!r}")


def draw_image(factors: tuple, size: int, rng: np.random.Generator, tint: np.ndarray | None = None) -> np.ndarray:
    """One float32 HxWx3 image in [0, 1] of the class with the given factor indices, with nuisance variation."""
    alpha_i, shape_i, orient_i, band_i, hue_i = factors
    background = power_law_noise(size, ALPHAS[alpha_i], rng)
    cast = 1.0 + rng.uniform(-0.15, 0.15, size=3)
    image = background[..., None] * 0.6 * cast[None, None, :] + 0.2
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    centre = rng.uniform(-0.3, 0.3, size=2)
    scale = rng.uniform(0.45, 0.7)
    angle = np.deg2rad(rng.uniform(-15.0, 15.0))
    dy, dx = (yy - centre[0]) / scale, (xx - centre[1]) / scale
    ry = np.cos(angle) * dy - np.sin(angle) * dx
    rx = np.sin(angle) * dy + np.cos(angle) * dx
    mask = _shape_mask(SHAPES[shape_i], ry, rx)
    theta = np.deg2rad(ORIENTATIONS_DEG[orient_i]) + angle
    cycles = BAND_CYCLES[BANDS[band_i]] * size / 32.0
    phase = rng.uniform(0, 2 * np.pi)
    grating = 0.5 + 0.5 * np.sin(np.pi * cycles * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    hue = np.asarray(HUES[hue_i])
    foreground = (0.35 + 0.65 * grating)[..., None] * hue[None, None, :]
    image = np.where(mask[..., None], foreground, image)
    if tint is not None:
        image = image + tint[None, None, :]
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
    image = (image - 0.5) * contrast + 0.5 + brightness + rng.normal(0.0, 0.03, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def long_tail_counts(n_max: int, imbalance: float, num_classes: int) -> list:
    """n_c = round(n_max * imbalance^(-c/(C-1))), the exponential profile of docs/evidence.md §1.2."""
    return [int(round(n_max * imbalance ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def make_split(classes: list, counts: list, size: int, seed: int, tint: np.ndarray | None = None) -> tuple:
    """Images (N, H, W, 3) float32 and int32 labels with counts[c] images of class c, deterministic in seed."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, (factors, count) in enumerate(zip(classes, counts)):
        for _ in range(count):
            images.append(draw_image(factors, size, rng, tint))
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)
