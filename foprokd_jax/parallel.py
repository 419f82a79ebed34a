"""Data parallelism in the pmap style, written with `jax.shard_map` over a 1-D 'data' mesh under `jax.jit`.

The per-device step sees its shard of the global batch and replicated state; gradients, metrics and
BatchNorm statistics are averaged across devices with explicit collectives over `DATA_AXIS`. Because
every device holds an equal slice and every average is an equal-weight mean over devices, results do
not depend on the device count (tested: 1 vs 8 devices). `jax.pmap` itself is legacy since JAX 0.8 and
is implemented this way (JAX 0.8.0 changelog; https://docs.jax.dev/en/latest/_autosummary/jax.pmap.html).
"""

import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def launched_as_multi_process(environ=None) -> bool:
    """Whether this process is one of several in a job (so `jax.distributed.initialize()` must run).

    Detected from the launchers' environments: Slurm with more than one task, a multi-host Cloud TPU
    slice (several worker hostnames), an explicit JAX coordinator address, or FOPROKD_DISTRIBUTED=1.
    """
    env = os.environ if environ is None else environ
    if env.get("FOPROKD_DISTRIBUTED", "").lower() in ("1", "true", "yes"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return bool(env.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize_distributed(environ=None) -> None:
    """Joins a multi-host job when launched as one; single-host runs (a laptop, one GPU box) skip it.

    `jax.distributed.initialize()` must run before any other JAX call. Cloud TPU and Slurm are detected by
    JAX itself; elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0) plus JAX_NUM_PROCESSES and
    JAX_PROCESS_ID, which are passed on here (JAX itself reads only the address). docs/pods.md.
    """
    env = os.environ if environ is None else environ
    if not launched_as_multi_process(env):
        return
    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed initialised: process %d of %d, %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
    )


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh named 'data' over the first `num_devices` global devices (all by default)."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices < 1 or num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are available")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_global_batch(global_batch_size: int, mesh: Mesh, name: str = "config.input.batch_size") -> None:
    """Each device (and each process) must get an equal slice of the global batch."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"{name}={global_batch_size} is not divisible by the {n} devices of the mesh; "
            f"choose a multiple of {n} (or set config.num_devices)."
        )
    if global_batch_size % jax.process_count():
        raise ValueError(f"{name}={global_batch_size} is not divisible by the {jax.process_count()} processes.")


def sync_processes(name: str) -> None:
    """Barrier across the processes of a multi-host job (no-op for a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree on every device of the mesh (the frozen teacher, the initial state)."""
    return jax.device_put(tree, replicated(mesh))


def host_batch_to_global(batch: dict, mesh: Mesh) -> dict:
    """Turns this process's slice of the global batch into global arrays sharded along 'data'.

    Each host loads only its own shard (see `data/pipeline.py`); `make_array_from_process_local_data`
    assembles the global array without moving data between hosts.
    """
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def data_parallel(
    per_device_fn: Callable, mesh: Mesh, *, num_replicated: int, num_sharded: int, donate_first: bool = False
) -> Callable:
    """Compiles `per_device_fn(*replicated_args, *sharded_args)` as a jitted shard_map over 'data'.

    Replicated args (state, teacher variables) enter whole on every device; sharded args (the batch) are
    split along their leading axis. Outputs are replicated: the function must reduce anything
    per-device with `lax.pmean`/`lax.psum` over `DATA_AXIS` before returning it.
    """
    in_specs = (P(),) * num_replicated + (P(DATA_AXIS),) * num_sharded
    # check_vma=False gives pmap semantics: differentiating a per-device loss with respect to replicated
    # parameters yields the per-device gradient, which the step then averages with an explicit pmean.
    # With check_vma=True, JAX would instead insert a psum into the transpose of the implicit
    # replicated->varying cast, and an explicit pmean on top would scale gradients by the device count
    # (caught by tests/test_steps.py::test_one_and_eight_devices_agree).
    mapped = jax.shard_map(per_device_fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,) if donate_first else ())


def pmean(tree: Any) -> Any:
    return jax.lax.pmean(tree, DATA_AXIS)


def psum(tree: Any) -> Any:
    return jax.lax.psum(tree, DATA_AXIS)


def device_count_summary(mesh: Mesh) -> str:
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return (
        f"{mesh.devices.size} devices ({', '.join(kinds)}) across {jax.process_count()} process(es); "
        f"this is process {jax.process_index()}"
    )


def to_host(tree: Any) -> Any:
    """Fetches replicated outputs (metrics) to numpy on the host."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "replicate",
    "host_batch_to_global",
    "data_parallel",
    "pmean",
    "psum",
    "maybe_initialize_distributed",
    "check_global_batch",
    "sync_processes",
    "to_host",
]
