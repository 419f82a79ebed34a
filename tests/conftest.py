"""Test set-up: 8 fake CPU devices (for the 1-vs-8-device tests) before JAX initialises its backend."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The official ISIC-2019-LT split CSVs are the authors' files and are never copied into the tree. Tests that read
# them run only where this variable names a folder holding them (CI sets it when it has a copy); every other test
# uses CSVs written in the official format from the packaged facts (tests/test_split_facts.py).
OFFICIAL_SPLITS_ENV = "FOPROKD_ISIC_SPLITS"


@pytest.fixture
def official_split_dir():
    """The folder of the official split CSVs named by $FOPROKD_ISIC_SPLITS; the test is skipped when it is unset."""
    split_dir = os.environ.get(OFFICIAL_SPLITS_ENV)
    if not split_dir:
        pytest.skip(f"${OFFICIAL_SPLITS_ENV} is not set (the official split CSVs are not part of the repository)")
    # Set but wrong must fail loudly, never skip.
    assert os.path.isdir(split_dir), f"${OFFICIAL_SPLITS_ENV}={split_dir!r} is not a folder"
    return split_dir
