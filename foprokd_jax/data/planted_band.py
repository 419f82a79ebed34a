"""A synthetic benchmark for the Fourier prompt: the class signal lives in one known radial frequency band.

Every image is mid-grey plus three independent, band-limited components, each built the same way:
white Gaussian noise -> FFT -> multiplied by a real, point-symmetric mask -> inverse FFT -> real part.
Because the mask is symmetric under k -> -k the filtered field is exactly real, and because the field is
periodic on the pixel grid its energy lies *exactly* in the bins the mask selects (no spectral leakage,
which a non-integer-frequency grating drawn with cos() would have).

* class signal (weak, grey, identical in R, G and B): the mask is the planted ring
  r_lo <= r < r_hi intersected with an orientation wedge of width pi/K centred on theta_c = pi * c / K
  (orientations are taken modulo pi since a real field's spectrum is point-symmetric). The phases are
  random for every image, so the class is a *texture* (oriented band-pass noise at random position),
  not a template: it can only be read from where in the band the energy sits. Scaled per image to RMS
  `signal_amplitude`.
* low-frequency distractor (strong, independent per channel): 0 < r < r_lo with a 1/r amplitude fall-off,
  i.e. smooth random blobs and shading; scaled per image to RMS `distractor_amplitude`.
* high-frequency distractor (strong, independent per channel): r_hi <= r, flat spectrum, i.e. fine grain;
  scaled per image to RMS `distractor_amplitude`.

Both distractors are isotropic and class-independent and have *no* energy inside the band, so a model
that could look at the band alone would see the class signal alone; a generic feature extractor mixes
all frequencies and sees the weak signal buried under the distractors. A prompt that amplifies the band
and attenuates the rest therefore raises the class signal-to-noise ratio of the teacher's features:
this is what `launch/planted_band.py` and `tests/test_planted_band.py` check the FPG learns.

The radius is the normalised one of `models.fourier_prompt.radial_frequency_grid`: each axis in units of
its own Nyquist frequency, divided by sqrt(2), so r = sqrt(2) * (cycles per pixel) on a square image,
1/sqrt(2) at the Nyquist frequency of one axis and 1 at the corner. A small, uniform brightness offset
per image (DC, r = 0) is added too. The result is quantised to uint8 NHWC; quantisation and the rare
clipping at 0/255 put a negligible amount of energy elsewhere.
"""

import math
from typing import Sequence, Tuple

import numpy as np

from foprokd_jax import frequency


def full_radius_and_angle(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Normalised radius and orientation (mod pi) of every bin of the full h x w FFT grid (fft order).

    The radius is the one of `radial_frequency_grid` extended to the full (not half) spectrum; the
    orientation is the angle of the frequency vector (v along H, u along W) folded into [0, pi).
    """
    freq_h, freq_w = frequency.axis_frequencies(h, w, half_spectrum=False)
    radius = frequency.radial_frequency(h, w, half_spectrum=False) / frequency.CORNER_RADIUS
    angle = np.mod(np.arctan2(freq_h[:, None], freq_w[None, :]), math.pi)
    # float32 like radial_frequency_grid, so that bins exactly on a band edge (e.g. r = 0.375 at 32 px)
    # fall on the same side of it here and in the prompt.
    return radius.astype(np.float32), angle


def class_masks(h: int, w: int, num_classes: int, band: Sequence[float]) -> np.ndarray:
    """(num_classes, h, w) boolean masks: the planted ring cut into num_classes orientation wedges."""
    radius, angle = full_radius_and_angle(h, w)
    r_lo, r_hi = band
    ring = (radius >= r_lo) & (radius < r_hi)
    width = math.pi / num_classes
    masks = []
    for c in range(num_classes):
        # Angular distance modulo pi to the wedge centre; half-open so that every ring bin belongs to
        # exactly one class (the wedges tile the ring).
        delta = np.mod(angle - c * width + width / 2, math.pi)
        masks.append(ring & (delta < width))
    return np.stack(masks)


def _filtered_noise(rng: np.random.Generator, shape, amplitude_filter: np.ndarray, rms: float) -> np.ndarray:
    """White noise of `shape` (..., h, w) filtered by a real symmetric spectrum filter, scaled to `rms`.

    The RMS is set per field (per image and channel) so that the strength of each component does not
    fluctuate from image to image; only its spatial arrangement is random.
    """
    noise = rng.standard_normal(shape)
    field = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(-2, -1)) * amplitude_filter, axes=(-2, -1)))
    std = np.sqrt(np.mean(field**2, axis=(-2, -1), keepdims=True))
    return field * (rms / np.maximum(std, 1e-12))


def make_planted_band_dataset(
    num_examples: int,
    image_size: int = 32,
    num_classes: int = 4,
    band: Sequence[float] = (0.25, 0.375),
    signal_amplitude: float = 0.06,
    distractor_amplitude: float = 0.12,
    brightness_jitter: float = 0.05,
    seed: int = 0,
) -> dict:
    """Planted-band images (see the module docstring); deterministic given `seed`.

    Returns dict(image=uint8 (N, S, S, 3), label=int32 (N,), band=(r_lo, r_hi) float32 (2,)).
    Labels are balanced (N // K or N // K + 1 per class) in a random order.
    """
    r_lo, r_hi = float(band[0]), float(band[1])
    if not 0.0 < r_lo < r_hi <= 1.0:
        raise ValueError(f"band must satisfy 0 < r_lo < r_hi <= 1, got {band}")
    size = int(image_size)
    masks = class_masks(size, size, num_classes, (r_lo, r_hi))
    if not np.all(masks.reshape(num_classes, -1).any(axis=1)):
        raise ValueError(
            f"band {band} holds no frequency bin of some class at image_size={size}; "
            "widen the band or use larger images"
        )
    radius, _ = full_radius_and_angle(size, size)
    low = np.where((radius > 0) & (radius < r_lo), 1.0 / np.maximum(radius, 1e-6), 0.0)
    high = (radius >= r_hi).astype(np.float64)

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
    signal = _filtered_noise(rng, (num_examples, size, size), masks[labels].astype(np.float64), signal_amplitude)
    distract_low = _filtered_noise(rng, (num_examples, 3, size, size), low, distractor_amplitude)
    distract_high = _filtered_noise(rng, (num_examples, 3, size, size), high, distractor_amplitude)
    brightness = rng.uniform(-brightness_jitter, brightness_jitter, (num_examples, 1, 1, 1))

    images = 0.5 + brightness + signal[:, None] + distract_low + distract_high  # (N, 3, S, S)
    images = np.clip(np.round(255.0 * images.transpose(0, 2, 3, 1)), 0, 255).astype(np.uint8)
    return dict(image=images, label=labels, band=np.asarray([r_lo, r_hi], np.float32))


def band_energy_fraction(images: np.ndarray, band: Sequence[float]) -> float:
    """Fraction of the (mean-removed) spectral energy of uint8 NHWC `images` inside the radial band.

    A diagnostic for the construction (and for the docs): small by design, the class signal is weak.
    """
    x = images.astype(np.float64) / 255.0
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2
    radius, _ = full_radius_and_angle(x.shape[1], x.shape[2])
    inside = (radius >= band[0]) & (radius < band[1])
    return float(power[:, inside].sum() / power.sum())
