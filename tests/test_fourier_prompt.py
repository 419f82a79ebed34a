"""Fourier prompt generator (RECONSTRUCTION, docs/fpg.md): identity at init, bounds, gradients, FFT facts, plots."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from foprokd_jax.methods.fopro import plots as fpg_plots
from foprokd_jax.methods.fopro import prompt as fourier_prompt
from foprokd_jax.methods.fopro.prompt import (
    FourierPrompt,
    apply_amplitude_gain,
    band_index,
    normalize,
    radial_frequency_grid,
    radial_gain_profile,
)
from foprokd_jax.metric_writer import MetricWriter

VARIANTS = fourier_prompt.VARIANTS
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = dict(hidden=4, depth=2)  # a narrower 'conditional' CNN keeps compile times down
# One shared batch shape lets eager op-by-op execution reuse its compiled kernels across tests.
SHAPE = (2, 16, 20, 3)


def make_prompt(variant, **overrides):
    return FourierPrompt(variant=variant, **(SMALL if variant == "conditional" else {}), **overrides)


def random_pixels(shape, seed=0, low=0.0, high=1.0):
    return jax.random.uniform(jax.random.PRNGKey(seed), shape, jnp.float32, low, high)


def param_count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hw", [SHAPE[1:3], (15, 21)])  # non-square; odd height and width
def test_prompt_is_the_identity_at_init(variant, hw):
    x = normalize(random_pixels((2, *hw, 3)))
    prompt = make_prompt(variant)
    variables = prompt.init(jax.random.PRNGKey(1), x)
    x_prompted, log_gain = prompt.apply(variables, x)
    error = float(jnp.max(jnp.abs(x_prompted - x)))
    print(f"identity error {variant} {hw}: {error:.2e}")
    assert error < 1e-5
    assert float(jnp.max(jnp.abs(log_gain))) == 0.0
    assert log_gain.dtype == jnp.float32 and log_gain.shape[1:3] == (hw[0], hw[1] // 2 + 1)


def test_bfloat16_input_runs_the_fft_in_float32_and_returns_bfloat16():
    x = normalize(random_pixels(SHAPE)).astype(jnp.bfloat16)
    for variant in VARIANTS:
        prompt = make_prompt(variant)
        variables = prompt.init(jax.random.PRNGKey(1), x)
        x_prompted, log_gain = prompt.apply(variables, x)
        assert x_prompted.dtype == jnp.bfloat16 and log_gain.dtype == jnp.float32
        error = float(jnp.max(jnp.abs(x_prompted.astype(jnp.float32) - x.astype(jnp.float32))))
        assert error < 0.02  # bf16 has an 8-bit mantissa; |x| < 2.7 gives steps of at most 2**-6
    with pytest.raises(Exception):  # the reason for the float32 cast
        jnp.fft.rfft2(x, axes=(1, 2))


@pytest.mark.parametrize("variant", VARIANTS)
def test_gain_stays_within_the_bound_for_huge_parameters(variant):
    alpha = 0.7
    x = normalize(random_pixels(SHAPE))
    prompt = make_prompt(variant, alpha=alpha)
    params = prompt.init(jax.random.PRNGKey(1), x)["params"]
    for sign in (1.0, -1.0):
        huge = jax.tree.map(lambda leaf: jnp.full_like(leaf, sign * 1e6), params)
        x_prompted, log_gain = prompt.apply({"params": huge}, x)
        gain = np.exp(np.asarray(log_gain))
        assert np.all(gain >= math.exp(-alpha) * (1 - 1e-6)) and np.all(gain <= math.exp(alpha) * (1 + 1e-6))
        assert np.allclose(np.abs(log_gain), alpha)  # saturated, not overflowed
        assert bool(jnp.all(jnp.isfinite(x_prompted)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_every_parameter_through_a_frozen_downstream_function(variant):
    x = normalize(random_pixels(SHAPE, low=0.2, high=0.8))  # away from the clip
    frozen_kernel = jax.random.normal(jax.random.PRNGKey(7), (3, 3, 3, 8))

    def frozen_teacher(images):  # fixed random conv + nonlinearity; its weights are constants
        features = jax.lax.conv_general_dilated(
            images, frozen_kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.mean(jnp.tanh(features) ** 2)

    prompt = make_prompt(variant)
    params = prompt.init(jax.random.PRNGKey(1), x)["params"]
    if variant == "conditional":
        # With the zero output layer only conv_out gets a gradient at step 0; move off zero to see all.
        params = dict(
            params,
            conv_out=jax.tree.map(
                lambda leaf: 0.1 * jax.random.normal(jax.random.PRNGKey(3), leaf.shape), params["conv_out"]
            ),
        )
    grads = jax.jit(jax.grad(lambda p: frozen_teacher(prompt.apply({"params": p}, x)[0])))(params)
    for path, grad in jax.tree.leaves_with_path(grads):
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), path
        if variant == "conditional":
            assert np.abs(grad).max() > 0, path  # every layer learns
        else:
            assert np.all(grad != 0), path  # every bin / band gets a gradient


def test_parameter_counts_at_224():
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    counts = {
        variant: param_count(jax.eval_shape(FourierPrompt(variant=variant).init, jax.random.PRNGKey(0), x))
        for variant in VARIANTS
    }
    print(f"parameter counts at 224x224: {counts}")
    assert counts["spectrum"] == 224 * 113 * 3 == 75936
    assert counts["radial"] == 16 * 3
    # (3 log-amplitudes + radius) -> 16 -> 16 -> 16 -> 3, 3x3 kernels with biases.
    assert counts["conditional"] == (9 * 4 * 16 + 16) + 2 * (9 * 16 * 16 + 16) + (9 * 16 * 3 + 3) == 5667
    shared = param_count(
        jax.eval_shape(FourierPrompt(variant="spectrum", share_channels=True).init, jax.random.PRNGKey(0), x)
    )
    assert shared == 224 * 113


@pytest.mark.parametrize("share_channels", [False, True])
def test_radial_has_k_times_c_parameters_and_a_constant_gain_per_band(share_channels):
    num_bands, (h, w) = 5, SHAPE[1:3]
    x = normalize(random_pixels(SHAPE))
    prompt = FourierPrompt(variant="radial", num_bands=num_bands, share_channels=share_channels)
    params = prompt.init(jax.random.PRNGKey(1), x)["params"]
    channels = 1 if share_channels else 3
    assert param_count(params) == num_bands * channels
    band_values = jax.random.normal(jax.random.PRNGKey(2), (num_bands, channels))
    _, log_gain = prompt.apply({"params": {"band_logits": band_values}}, x)
    assert log_gain.shape == (1, h, w // 2 + 1, channels)  # one gain map for the whole batch
    bands = band_index(h, w, num_bands)
    for band in range(num_bands):
        in_band = np.asarray(log_gain[0])[bands == band]  # (bins in band, channels)
        np.testing.assert_allclose(
            in_band, np.tanh(np.asarray(band_values[band]))[None].repeat(len(in_band), 0), rtol=1e-6
        )
    radii, profile = radial_gain_profile(log_gain, num_bands, w=w)  # bins == bands: exact recovery
    np.testing.assert_allclose(np.asarray(profile), np.tanh(np.asarray(band_values)), rtol=1e-5)


def test_radial_frequency_grid_and_bands():
    radius = radial_frequency_grid(16, 16)
    assert radius.shape == (16, 9)
    assert radius[0, 0] == 0.0
    assert radius[8, 8] == pytest.approx(1.0)  # Nyquist corner
    assert radius[0, 8] == pytest.approx(radius[8, 0]) == pytest.approx(1 / math.sqrt(2))  # axis Nyquist
    assert radius[1, 3] == pytest.approx(radius[-1, 3])  # symmetric in +-v (rfft2 row order)
    bands = band_index(16, 16, 4)
    assert bands[0, 0] == 0 and bands[8, 8] == 3 and set(np.unique(bands)) == {0, 1, 2, 3}


def test_amplifying_one_band_raises_its_energy_and_keeps_every_phase():
    (h, w), num_bands, band = SHAPE[1:3], 6, 2
    x01 = 0.5 + 0.1 * (random_pixels(SHAPE, seed=4) - 0.5)  # no clipping anywhere
    in_band = jnp.asarray(band_index(h, w, num_bands) == band)[None, :, :, None]
    log_gain = jnp.where(in_band, 0.5, 0.0)
    out = apply_amplitude_gain(x01, log_gain)
    assert float(out.min()) > 0.0 and float(out.max()) < 1.0
    np.testing.assert_allclose(np.asarray(apply_amplitude_gain(x01, log_gain, clip=False)), np.asarray(out))

    spectrum_in = np.asarray(jnp.fft.rfft2(x01, axes=(1, 2)))
    spectrum_out = np.asarray(jnp.fft.rfft2(out, axes=(1, 2)))
    mask = np.broadcast_to(np.asarray(in_band), spectrum_in.shape)
    energy_ratio = np.sum(np.abs(spectrum_out[mask]) ** 2) / np.sum(np.abs(spectrum_in[mask]) ** 2)
    assert energy_ratio == pytest.approx(math.exp(1.0), rel=1e-4)  # amplitude x e^0.5 -> energy x e
    np.testing.assert_allclose(np.abs(spectrum_out[~mask]), np.abs(spectrum_in[~mask]), atol=1e-3)
    # The phase of every bin (other bands and this one) is unchanged; compare where it is well defined.
    significant = np.abs(spectrum_in) > 1e-2
    phase_shift = np.angle(spectrum_out[significant] * np.conj(spectrum_in[significant]))
    assert np.max(np.abs(phase_shift)) < 1e-3


@pytest.mark.parametrize("hw", [SHAPE[1:3], (15, 21)])
def test_rfft_path_gives_the_real_full_spectrum_result(hw):
    """irfft2 of the gained half spectrum == ifft2 of the full spectrum with the same (symmetric) gain."""
    h, w = hw
    x01 = random_pixels((2, h, w, 3), seed=5, low=0.3, high=0.7)
    band_gain = jnp.linspace(-0.4, 0.4, 6)
    out = apply_amplitude_gain(x01, band_gain[band_index(h, w, 6)][None, :, :, None], clip=False)
    assert out.dtype == jnp.float32 and not jnp.iscomplexobj(out) and out.shape == x01.shape
    # The same gain on the full (h, w) grid, which is symmetric under (v, u) -> (-v, -u).
    freq_h, freq_w = np.fft.fftfreq(h) / 0.5, np.fft.fftfreq(w) / 0.5
    radius = np.sqrt(freq_h[:, None] ** 2 + np.abs(freq_w)[None, :] ** 2) / math.sqrt(2)
    full_gain = np.exp(np.asarray(band_gain)[np.minimum(np.floor(radius * 6), 5).astype(int)])
    full = np.fft.ifft2(np.fft.fft2(np.asarray(x01), axes=(1, 2)) * full_gain[None, :, :, None], axes=(1, 2))
    assert np.max(np.abs(full.imag)) < 1e-6
    np.testing.assert_allclose(np.asarray(out), full.real, atol=2e-6)


@pytest.mark.parametrize("w", [12, 13])
def test_conditional_padding_continues_the_full_spectrum(w):
    """The half-spectrum padding reproduces the true neighbouring amplitudes of the full spectrum."""
    h = 10
    x01 = np.asarray(random_pixels((1, h, w, 2), seed=6))
    full = np.abs(np.fft.fft2(x01, axes=(1, 2)))
    half = jnp.asarray(full[:, :, : w // 2 + 1])
    padded = np.asarray(fourier_prompt._pad_hermitian_spectrum(half, w))
    rows, cols = np.arange(-1, h + 1) % h, np.arange(-1, w // 2 + 2) % w
    np.testing.assert_allclose(padded, full[:, rows][:, :, cols], rtol=1e-5)


def test_plots_and_tensorboard_images(tmp_path):
    images = np.asarray(random_pixels((3, 24, 32, 3), seed=8) * 255).astype(np.uint8)
    prompt = FourierPrompt(variant="radial", num_bands=6)
    params = {"band_logits": jnp.linspace(-2.0, 2.0, 18).reshape(6, 3)}
    prompted, log_gain = prompt.apply({"params": params}, normalize(images.astype(np.float32) / 255))

    gain_png = fpg_plots.plot_gain_spectrum(log_gain, str(tmp_path / "gain.png"))
    examples_png = fpg_plots.plot_prompted_examples(
        images, fpg_plots.to_uint8(prompted), str(tmp_path / "examples.png"), max_images=2
    )
    for path in (gain_png, examples_png):
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE and os.path.getsize(path) > 5000

    visuals = fpg_plots.prompt_visuals(prompt, {"params": params}, images)
    assert visuals["side_by_side"].dtype == np.uint8 and visuals["side_by_side"].shape == (2 * 24 + 2, 3 * 32 + 4, 3)
    assert visuals["gain_png_array"].dtype == np.uint8 and visuals["gain_png_array"].ndim == 3
    assert np.array_equal(visuals["side_by_side"][:24, :32], images[0])  # originals on top, unresampled

    workdir = str(tmp_path / "run")
    with MetricWriter(workdir) as writer:
        writer.write_images(5, {"fpg/gain": visuals["gain_png_array"], "fpg/side_by_side": visuals["side_by_side"]})
        writer.write_images(6, {"fpg/batch": images[:2]})
        with pytest.raises(ValueError):
            writer.write_images(7, {"bad": images.astype(np.float32)})
    accumulator = EventAccumulator(os.path.join(workdir, "tb"))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["images"]) == ["fpg/batch/0", "fpg/batch/1", "fpg/gain", "fpg/side_by_side"]
    [event] = accumulator.Images("fpg/side_by_side")
    assert (event.step, event.height, event.width) == (5, 50, 100)
    assert event.encoded_image_string.startswith(PNG_SIGNATURE)
    assert sorted(os.listdir(os.path.join(workdir, "images"))) == [
        "fpg_batch_6_0.png",
        "fpg_batch_6_1.png",
        "fpg_gain_5.png",
        "fpg_side_by_side_5.png",
    ]
