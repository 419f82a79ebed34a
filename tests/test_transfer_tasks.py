"""Tests of the transfer benchmark's procedural tasks (foprokd_jax/data/transfer_tasks.py)."""

import numpy as np
import pytest

from foprokd_jax.data import transfer_tasks as tt


def test_source_and_target_classes_are_disjoint_and_share_factors():
    source, target = tt.task_classes(32, 8, seed=0)
    assert len(source) == 32 and len(target) == 8
    assert not set(source) & set(target)
    for position in range(5):
        assert {f[position] for f in target} <= {f[position] for f in source}


def test_too_many_classes_is_refused():
    with pytest.raises(ValueError, match="exceed"):
        tt.task_classes(200, 100)


def test_long_tail_counts_match_the_protocol():
    assert tt.long_tail_counts(500, 100, 8) == [500, 259, 134, 69, 36, 19, 10, 5]


def test_power_law_noise_has_the_requested_spectral_slope():
    rng = np.random.default_rng(0)
    size = 64
    power = np.zeros((size, size))
    for _ in range(20):
        power += np.abs(np.fft.fft2(tt.power_law_noise(size, 2.0, rng))) ** 2
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2)
    keep = (f > 0.02) & (f < 0.4)
    slope = np.polyfit(np.log(f[keep]), np.log(power[keep]), 1)[0]
    assert -2.3 < slope < -1.7


def test_make_split_is_deterministic_and_counted():
    _, target = tt.task_classes(32, 8, seed=0)
    a, la = tt.make_split(target, [3, 1, 0, 0, 0, 0, 0, 2], 32, seed=1, tint=tt.TARGET_TINT)
    b, lb = tt.make_split(target, [3, 1, 0, 0, 0, 0, 0, 2], 32, seed=1, tint=tt.TARGET_TINT)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, [0, 0, 0, 1, 7, 7])
    assert 0.0 <= a.min() and a.max() <= 1.0
