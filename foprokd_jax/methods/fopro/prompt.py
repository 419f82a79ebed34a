"""Fourier Prompt Generator (FPG): a learned, bounded gain on the amplitude spectrum of the teacher's input.

RECONSTRUCTION. FoPro-KD (Elbatel, Martí, Li, IEEE TMI 2024) names an FPG that "manipulates specific
frequencies in the input image" by "amplifying or diminishing" them, but its code was never released
(author, xmed-lab/FoPro-KD issue #2) and the paper body was not available to us. This module is our own
design that fits those statements (docs/reference_semantics.md §2.4; write-up in docs/fpg.md):

    x01 = x * std + mean                                  ImageNet un-normalisation, float32
    X   = rfft2(x01)            = A * exp(i Phi)            (B, H, W//2+1, C), complex64
    M   = exp(alpha * tanh(g))  in [e^-alpha, e^alpha]      real, positive gain
    x^  = clip(irfft2(A * M * exp(i Phi), s=(H, W)), 0, 1)  phase kept, real output
    out = (x^ - mean) / std                                 re-normalised, cast back to x.dtype

Only the amplitude is modulated and the phase is kept because the phase carries most of the semantic
content while the amplitude carries "style" statistics: the premise of Fourier domain adaptation (FDA,
Yang & Soatto, CVPR 2020), of amplitude-spectrum interpolation in FedDG (Liu et al., CVPR 2021) and of
amplitude-phase recombination (APR, Chen et al., ICCV 2021).

Since M is real and positive, A * M * exp(i Phi) == M * X exactly. We multiply X by M directly: it is
the same operation, costs no angle/abs round trip, and has no undefined gradient at bins with A = 0.

Variants of g (every one starts at zero, so M = 1 and the prompt is the identity at step 0):
* 'spectrum': one free logit per rfft2 bin and channel, (H, W//2+1, C or 1): a dataset-level prompt.
* 'radial': one logit per (radial band, channel), (K, C or 1), spread over the rfft2 grid by
  `band_index`: a smooth, isotropic prompt with very few parameters.
* 'conditional': a small CNN on the image's own log-amplitude spectrum: an input-conditional prompt
  ("targeted perturbations conditional on a target dataset", v1 abstract).

The FFT needs float32 (XLA's RFFT rejects bf16), so the whole FPG runs in float32 whatever the input
dtype. Run it per device (inside the shard-mapped step), never on a batch-sharded global array under
plain jit: that compiles to all-gathers of the whole batch (docs/fpg.md §3.4; jax-ml/jax#13081).
"""

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax import frequency
from foprokd_jax.image_norm import normalize, unnormalize

VARIANTS = ("spectrum", "radial", "conditional")


def radial_frequency_grid(h: int, w: int) -> np.ndarray:
    """Radius of every rfft2 bin scaled to [0, 1] (Nyquist corner = 1), float32, shape (h, w // 2 + 1).

    `frequency.radial_frequency` (axis Nyquist = 1) divided by sqrt(2): with the corner at 1, `band_index`
    needs no special case for the corners.
    """
    return (frequency.radial_frequency(h, w) / frequency.CORNER_RADIUS).astype(np.float32)


def band_index(h: int, w: int, num_bands: int) -> np.ndarray:
    """Radial band (0 .. num_bands-1) of every rfft2 bin, shape (h, w // 2 + 1), int32.

    Bands have equal width in the normalised radius of `radial_frequency_grid`: band k holds
    k/K <= r < (k+1)/K; the Nyquist corner (r = 1) joins the last band. Band 0 contains DC.
    """
    radius = radial_frequency_grid(h, w)
    return np.minimum(np.floor(radius * num_bands), num_bands - 1).astype(np.int32)


def _modulate_spectrum(spectrum: jnp.ndarray, log_gain: jnp.ndarray, hw: Tuple[int, int], clip: bool) -> jnp.ndarray:
    """irfft2(exp(log_gain) * spectrum): amplitude scaled, phase untouched; optionally clipped to [0, 1]."""
    gain = jnp.exp(log_gain.astype(jnp.float32))
    # irfft2 reads only the half spectrum and returns a real array; for the self-conjugate columns
    # (DC and, for even W, Nyquist) an asymmetric gain is effectively averaged with its partner.
    out = jnp.fft.irfft2(spectrum * gain, s=hw, axes=(1, 2))
    return jnp.clip(out, 0.0, 1.0) if clip else out


def apply_amplitude_gain(x01: jnp.ndarray, log_gain: jnp.ndarray, clip: bool = True) -> jnp.ndarray:
    """The FFT core: multiply the amplitude of every rfft2 bin by exp(log_gain), keep the phase.

    x01: (B, H, W, C) pixels in [0, 1] (cast to float32). log_gain: real, broadcastable to
    (B, H, W//2+1, C). Returns float32 (B, H, W, C), clipped to [0, 1] unless `clip=False`.
    """
    x01 = x01.astype(jnp.float32)
    spectrum = jnp.fft.rfft2(x01, axes=(1, 2))
    return _modulate_spectrum(spectrum, log_gain, x01.shape[1:3], clip)


def radial_gain_profile(log_gain: jnp.ndarray, num_bins: int, w: Optional[int] = None):
    """Mean log-gain per radial bin and channel, for plots and tests.

    log_gain: (N or 1, H, W//2+1, C). `w` is the image width; by default the even one, 2 * (W//2+1 - 1).
    Returns (radii, profile): bin centres (num_bins,) in the units of `radial_frequency_grid` and the
    mean over the batch and over the bins of each radial bin, (num_bins, C); NaN where a bin is empty.
    """
    log_gain = jnp.asarray(log_gain, jnp.float32)
    h, w_half = log_gain.shape[-3], log_gain.shape[-2]
    w = 2 * (w_half - 1) if w is None else w
    if w // 2 + 1 != w_half:
        raise ValueError(f"width {w} does not give {w_half} rfft2 columns")
    bins = band_index(h, w, num_bins).reshape(-1)
    per_bin = jnp.mean(log_gain.reshape(-1, h, w_half, log_gain.shape[-1]), axis=0).reshape(h * w_half, -1)
    sums = jax.ops.segment_sum(per_bin, bins, num_segments=num_bins)
    counts = jnp.asarray(np.bincount(bins, minlength=num_bins), jnp.float32)[:, None]
    profile = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), jnp.nan)
    radii = (np.arange(num_bins, dtype=np.float32) + 0.5) / num_bins
    return jnp.asarray(radii), profile


def _pad_hermitian_spectrum(features: jnp.ndarray, w: int) -> jnp.ndarray:
    """Pads a (B, H, W//2+1, F) half-spectrum map by one bin on every side, for a 3x3 'VALID' conv.

    Along H (frequency v, rfft2 order) the axis is periodic, so the padding wraps around. Along the
    half-spectrum axis u there is no wrap, but a real image's spectrum is Hermitian:
    A(v, -u) = A(-v, u). The true neighbours outside the half plane are therefore the columns just
    inside it with v mirrored: column u = -1 is column 1 at -v; beyond the last column, column
    W//2 + 1 is column W//2 - 1 at -v for even W (Nyquist edge) and column (W-1)/2 itself for odd W.
    We prefer this exact continuation to zero or edge padding, which invent a boundary that does not
    exist in the full spectrum (RECONSTRUCTION choice; hidden layers reuse the same rule).
    """

    def mirror_v(columns):
        return jnp.roll(jnp.flip(columns, axis=1), 1, axis=1)  # row v -> row (-v) mod H

    left = mirror_v(features[:, :, 1:2])
    right = mirror_v(features[:, :, -2:-1] if w % 2 == 0 else features[:, :, -1:])
    padded = jnp.concatenate([left, features, right], axis=2)
    return jnp.pad(padded, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="wrap")


class FourierPrompt(nn.Module):
    """The FPG. `__call__(x)` -> (x_prompted, log_gain); both documented at the top of this module.

    Attributes:
      variant: 'spectrum' | 'radial' | 'conditional'.
      alpha: bound of the log-gain: M = exp(alpha * tanh(g)) in [e^-alpha, e^alpha].
      num_bands: radial bands K ('radial').
      share_channels: one gain for all colour channels instead of one per channel.
      hidden, depth: the 'conditional' CNN: depth x [3x3 conv, hidden channels, ReLU] -> 3x3 conv.
    """

    variant: str = "spectrum"
    alpha: float = 1.0
    num_bands: int = 16
    share_channels: bool = False
    hidden: int = 16
    depth: int = 3

    @nn.compact
    def __call__(self, x: jnp.ndarray):
        if self.variant not in VARIANTS:
            raise ValueError(f"Unknown FPG variant {self.variant!r}; available: {VARIANTS}")
        _, h, w, channels = x.shape
        gain_channels = 1 if self.share_channels else channels
        x01 = unnormalize(x)
        spectrum = jnp.fft.rfft2(x01, axes=(1, 2))

        if self.variant == "spectrum":
            logits = self.param("gain_logits", nn.initializers.zeros, (h, w // 2 + 1, gain_channels), jnp.float32)[None]
        elif self.variant == "radial":
            band_logits = self.param("band_logits", nn.initializers.zeros, (self.num_bands, gain_channels), jnp.float32)
            logits = band_logits[band_index(h, w, self.num_bands)][None]  # (1, H, W//2+1, C or 1)
        else:
            logits = self._conditional_logits(spectrum, h, w, gain_channels)

        log_gain = self.alpha * jnp.tanh(logits)
        prompted01 = _modulate_spectrum(spectrum, log_gain, (h, w), clip=True)
        return normalize(prompted01).astype(x.dtype), log_gain

    def _conditional_logits(self, spectrum, h, w, gain_channels):
        """Per-image gain logits from a small CNN on the log-amplitude spectrum, (B, H, W//2+1, C or 1).

        Input features: log1p of the orthonormally scaled amplitude (|X| / sqrt(H W), so the scale does
        not depend on the resolution) plus the normalised radius as an extra channel. A CNN is
        translation-equivariant, so without the radius it could target frequencies only through the
        local amplitude pattern, not by where they are (CoordConv-style; RECONSTRUCTION choice).
        The amplitude is a stop-gradient input: the gain is a function of the image statistics and no
        gradient needs to reach the pixels through |X| (whose derivative is undefined at A = 0).
        """
        batch = spectrum.shape[0]
        amplitude = jax.lax.stop_gradient(jnp.abs(spectrum)) / math.sqrt(h * w)
        radius = jnp.broadcast_to(jnp.asarray(radial_frequency_grid(h, w))[None, :, :, None], (batch, h, w // 2 + 1, 1))
        features = jnp.concatenate([jnp.log1p(amplitude), radius], axis=-1)
        he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
        for layer in range(self.depth):
            features = nn.Conv(
                self.hidden,
                (3, 3),
                padding="VALID",
                kernel_init=he_normal,
                param_dtype=jnp.float32,
                name=f"conv_{layer}",
            )(_pad_hermitian_spectrum(features, w))
            features = nn.relu(features)
        # Zero output layer: M = 1 at init, so training starts as plain EKD.
        return nn.Conv(
            gain_channels,
            (3, 3),
            padding="VALID",
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            param_dtype=jnp.float32,
            name="conv_out",
        )(_pad_hermitian_spectrum(features, w))
