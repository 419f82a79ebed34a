"""The one radial-frequency convention of the project (FPG bands, the teacher frequency sweep, planted bands).

For an H x W image with FFT bin frequencies f_y = fftfreq(H), f_x = fftfreq(W) in cycles per pixel, each axis
is measured in units of its own Nyquist frequency (0.5 cycles/pixel, so non-square images are handled) and

    r = sqrt((2 f_y)^2 + (2 f_x)^2)

is 0 at DC, 1 at the Nyquist frequency of either axis and sqrt(2) at the Nyquist corner. Users that need a
radius in [0, 1] (the FPG's equal-width bands, `methods/fopro/prompt.py`) divide by `CORNER_RADIUS`.
Row order is the FFT order along H (0, 1, ..., -1), not fftshifted. Numpy float64, so a trace-time constant
under jit; callers cast (float32 everywhere today, so that bins exactly on a band edge fall on the same side in
every user).
"""

import math
from typing import Tuple

import numpy as np

CORNER_RADIUS = math.sqrt(2.0)


def axis_frequencies(h: int, w: int, half_spectrum: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(2 f_y of shape (h,), 2 f_x of shape (w // 2 + 1,) for the rfft2 grid or (w,) for the full fft2 grid)."""
    freq_w = np.fft.rfftfreq(w) if half_spectrum else np.fft.fftfreq(w)
    return np.fft.fftfreq(h) / 0.5, freq_w / 0.5


def radial_frequency(h: int, w: int, half_spectrum: bool = True) -> np.ndarray:
    """r of every bin (module docstring): shape (h, w // 2 + 1) for rfft2, (h, w) with half_spectrum=False."""
    freq_h, freq_w = axis_frequencies(h, w, half_spectrum)
    return np.sqrt(freq_h[:, None] ** 2 + freq_w[None, :] ** 2)
