"""Figures for the Fourier prompt generator (RECONSTRUCTION, see docs/fpg.md): the learned gain, prompted images.

Built with `matplotlib.figure.Figure` and the Agg canvas, never pyplot (like `foprokd_jax/plots.py`), so
nothing needs a display. `prompt_visuals` returns uint8 arrays for `MetricWriter.write_images`.
"""

import math
import os
from typing import Optional

import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from foprokd_jax import image_norm
from foprokd_jax.methods.fopro import prompt as fourier_prompt

_CHANNEL_NAMES = ("R", "G", "B")
_CHANNEL_COLORS = ("#c44e52", "#55a868", "#4c72b0")
_PROFILE_BINS = 32


def _channel_label(channel: int, num_channels: int) -> str:
    if num_channels == 1:
        return "all channels"
    return _CHANNEL_NAMES[channel] if num_channels == 3 else f"channel {channel}"


def _gain_figure(log_gain, image_width: Optional[int] = None) -> Figure:
    """One half-spectrum panel per channel (log-gain, centred on 0 = gain 1) and a radial profile panel.

    log_gain: (N or 1, H, W//2+1, C); a batch (the 'conditional' variant) is averaged over images.
    Rows are fftshifted so DC sits mid-height (negative vertical frequencies below); axes in cycles/pixel.
    """
    log_gain = np.asarray(log_gain, np.float32)
    mean_gain = log_gain.reshape((-1,) + log_gain.shape[-3:]).mean(axis=0)  # (H, W//2+1, C)
    h, w_half, num_channels = mean_gain.shape
    width = 2 * (w_half - 1) if image_width is None else image_width
    shifted = np.fft.fftshift(mean_gain, axes=0)
    # Symmetric colour limits keep log-gain 0 (gain 1, unchanged) at the neutral colour.
    limit = max(float(np.max(np.abs(mean_gain))), 1e-3)
    freq_h = np.fft.fftshift(np.fft.fftfreq(h))
    extent = (0.0, float(np.fft.rfftfreq(width)[-1]), float(freq_h[0]), float(freq_h[-1]))
    as_gain = FuncFormatter(lambda value, _: f"x{math.exp(value):.2f}")

    figure = Figure(figsize=(3.0 * num_channels + 5.0, 3.6), layout="constrained")
    # Channel panels, a dedicated colour-bar column, then the wider radial-profile panel.
    axes = figure.subplots(1, num_channels + 2, gridspec_kw={"width_ratios": [1] * num_channels + [0.07, 1.5]})
    image = None
    for channel in range(num_channels):
        axis = axes[channel]
        image = axis.imshow(
            shifted[:, :, channel],
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            extent=extent,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
        )
        axis.set_title(_channel_label(channel, num_channels))
        axis.set_xlabel("horizontal freq. (cycles/px)")
        if channel == 0:
            axis.set_ylabel("vertical freq. (cycles/px)")
        else:
            axis.set_yticklabels([])
    colorbar = figure.colorbar(image, cax=axes[num_channels], format=as_gain)
    colorbar.set_label("amplitude gain M (white = 1)")

    radii, profile = fourier_prompt.radial_gain_profile(mean_gain[None], _PROFILE_BINS, w=width)
    profile_axis = axes[-1]
    profile_axis.axhline(0.0, color="gray", linewidth=0.8)
    for channel in range(num_channels):
        color = _CHANNEL_COLORS[channel] if num_channels == 3 else "black"
        profile_axis.plot(
            np.asarray(radii),
            np.asarray(profile[:, channel]),
            marker=".",
            color=color,
            label=_channel_label(channel, num_channels),
        )
    profile_axis.yaxis.set_major_formatter(as_gain)
    profile_axis.set_xlabel("radius (1 = Nyquist corner)")
    profile_axis.set_ylabel("mean gain over the ring")
    profile_axis.set_title("radial profile")
    profile_axis.legend(fontsize="small")
    batch_note = f" (mean over {log_gain.shape[0]} images)" if log_gain.ndim == 4 and log_gain.shape[0] > 1 else ""
    figure.suptitle(f"Learned Fourier prompt gain{batch_note}")
    return figure


def _save(figure: Figure, out_png: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out_png, dpi=120, bbox_inches="tight")
    return out_png


def _figure_to_array(figure: Figure) -> np.ndarray:
    """Renders a figure to a uint8 RGB (H, W, 3) array."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def plot_gain_spectrum(log_gain, out_png: str) -> str:
    """Writes the learned gain per channel over the half spectrum plus its radial profile; returns the path."""
    return _save(_gain_figure(log_gain), out_png)


def plot_prompted_examples(images_uint8, prompted_uint8, out_png: str, max_images: int = 6) -> str:
    """Writes originals (top row) above their prompted versions (bottom row); returns the path."""
    images_uint8, prompted_uint8 = np.asarray(images_uint8), np.asarray(prompted_uint8)
    count = min(max_images, images_uint8.shape[0])
    figure = Figure(figsize=(2.2 * count, 4.6))
    axes = np.asarray(figure.subplots(2, count, squeeze=False))
    for column in range(count):
        for row, (batch, label) in enumerate(((images_uint8, "original"), (prompted_uint8, "prompted"))):
            axis = axes[row, column]
            axis.imshow(batch[column].squeeze(), cmap="gray" if batch.shape[-1] == 1 else None, vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(label)
    figure.suptitle("Teacher input: original (top) and Fourier-prompted (bottom)")
    return _save(figure, out_png)


def to_uint8(x_normalized) -> np.ndarray:
    """ImageNet-normalised floats -> uint8 pixels (clipped, rounded)."""
    x01 = np.asarray(fourier_prompt.unnormalize(jnp.asarray(x_normalized)))
    return np.round(np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(rows, gap: int = 2) -> np.ndarray:
    """Tiles equal-sized uint8 NHWC batches, one batch per row, into one uint8 HWC image (white gaps)."""
    rows = [np.asarray(row) for row in rows]
    count, h, w, c = rows[0].shape
    grid = np.full((len(rows) * (h + gap) - gap, count * (w + gap) - gap, c), 255, np.uint8)
    for r, row in enumerate(rows):
        for i in range(count):
            grid[r * (h + gap) : r * (h + gap) + h, i * (w + gap) : i * (w + gap) + w] = row[i]
    return grid


def prompt_visuals(prompt_module, prompt_params, images_uint8, max_images: int = 6) -> dict:
    """Runs the FPG on a uint8 NHWC batch; returns uint8 HWC arrays ready for `MetricWriter.write_images`.

    `prompt_params` is the FPG's parameter tree, or a full variables dict with a "params" key.
    gain_png_array: the `plot_gain_spectrum` figure rendered to RGB. side_by_side: originals (top row)
    above prompted images (bottom row) at native resolution, no resampling.
    """
    images_uint8 = np.asarray(images_uint8)[:max_images]
    variables = prompt_params if "params" in prompt_params else {"params": prompt_params}
    prompted, log_gain = prompt_module.apply(variables, image_norm.normalize_uint8(jnp.asarray(images_uint8)))
    return {
        "gain_png_array": _figure_to_array(_gain_figure(log_gain, image_width=images_uint8.shape[2])),
        "side_by_side": image_grid([images_uint8, to_uint8(prompted)]),
    }
