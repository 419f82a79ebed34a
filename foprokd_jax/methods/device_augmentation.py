"""Where the "skin" augmentation runs: `config.input.augment_on` ('auto', 'host' or 'device'; issue 18).

- 'host': grain augments each example with PIL on the CPU (`data/augment.py`), the reference implementation.
- 'device': the host only reads and batches uint8 images; the train step augments them first, per device on its
  shard of the batch, with `data/device_augment.py`, in the same compiled program as the step.
- 'auto' (default): 'device' when the default backend is a GPU or TPU, 'host' on CPU. On a CPU the "device" is
  the host's own cores, so moving the work buys nothing, and the PIL version is the reference one.

Example i of the global batch at step t is augmented with the key (config.seed, t, i): `state.step` is part of
the checkpointed state, so a resumed run augments exactly as the uninterrupted one, and the global index does not
depend on how many devices or hosts share the batch (tests/test_device_augment.py).
"""

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from foprokd_jax import parallel
from foprokd_jax.data import device_augment

AUGMENT_ON = ("auto", "host", "device")
ACCELERATOR_BACKENDS = ("gpu", "tpu", "cuda", "rocm")


def resolve_augment_on(augment_on: str, backend: str = None) -> str:
    """'host' or 'device' for `config.input.augment_on` on `backend` (default: jax.default_backend())."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"config.input.augment_on={augment_on!r} is not one of {AUGMENT_ON}")
    if augment_on != "auto":
        return augment_on
    backend = jax.default_backend() if backend is None else backend
    return "device" if backend in ACCELERATOR_BACKENDS else "host"


def make_batch_augmenter(mesh, seed: int) -> Callable:
    """`augment(step, images) -> images`: the skin augmentation of a global uint8 batch sharded along 'data'.

    Each device augments its own rows; row r of device d is global example d * local_batch + r (the layout of
    `parallel.host_batch_to_global`), whose key is `device_augment.example_key(seed, step, index)`.
    """

    def per_device(step, images):
        first = jax.lax.axis_index(parallel.DATA_AXIS) * images.shape[0]
        return device_augment.augment_batch(images, seed, step, first_index=first)

    return jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS)), out_specs=P(parallel.DATA_AXIS), check_vma=False
    )


def with_device_augmentation(train_step: Callable, mesh, seed: int, donate: bool = True) -> Callable:
    """`train_step(state, frozen, batch)` with the batch's images augmented on the devices first, one program.

    The key's step is `state.step` (steps taken before this one), read on the device: no host synchronisation.
    """
    augment = make_batch_augmenter(mesh, seed)

    def step(state, frozen, batch):
        return train_step(state, frozen, dict(batch, image=augment(state.step, batch["image"])))

    return jax.jit(step, donate_argnums=(0,) if donate else ())
