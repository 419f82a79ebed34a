"""Shared by the tests that run `launch/train.py` as a subprocess (resume, multi-process, bad inputs)."""

import os

from configs import isic
from foprokd_jax.data import registry, synthetic


def write_tiny_isic(root: str) -> str:
    """A tiny synthetic ISIC (32x32), prepared here so concurrent training subprocesses never race to build it."""
    synthetic.write_synthetic_isic(
        root,
        n_max=24,
        val_per_class=2,
        test_per_class=3,
        image_sizes=((40, 30), (32, 32)),
        folds=(1,),
        imbs=("0.01",),
        seed=0,
    )
    config = isic.get_config("method=bsm,runlocal")
    config.unlock()
    config.input.update(dict(image_root=root, split_dir=f"{root}/splits", prepared_dir=f"{root}/tfds"))
    registry.load_dataset(config.input)
    return root


def cli_env(tmp_path_factory, devices: int, **extra) -> dict:
    """Environment of a training subprocess: CPU, `devices` devices, no fault hook, and the session's
    persistent compilation cache (shared by every CLI test, so each shape compiles once per session)."""
    cache = str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")
    env = {k: v for k, v in os.environ.items() if k != "FOPROKD_FAULT"}
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        **extra,
    )
    return env
