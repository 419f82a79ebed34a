"""Mesh helpers and multi-host detection (the collectives themselves are tested in test_steps.py)."""

import jax
import numpy as np
import pytest

from foprokd_jax import parallel


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"FOPROKD_DISTRIBUTED": "1"}, True),
    ],
)
def test_multi_process_detection(env, expected):
    assert parallel.launched_as_multi_process(env) is expected


def test_distributed_initialisation_reads_the_generic_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    parallel.maybe_initialize_distributed({})  # a single-host run never initialises
    parallel.maybe_initialize_distributed(
        {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    )
    parallel.maybe_initialize_distributed({"SLURM_NTASKS": "8"})  # Slurm: JAX detects the rest itself
    assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2), {}]


def test_mesh_and_batch_checks():
    mesh = parallel.make_mesh(8)
    assert mesh.axis_names == (parallel.DATA_AXIS,) and mesh.devices.size == 8
    parallel.check_global_batch(32, mesh)
    with pytest.raises(ValueError, match="config.input.batch_size=12 is not divisible by the 8 devices"):
        parallel.check_global_batch(12, mesh)
    with pytest.raises(ValueError, match="config.input.eval_batch_size=4 is not"):
        parallel.check_global_batch(4, mesh, "config.input.eval_batch_size")
    parallel.sync_processes("single process: a no-op")
    with pytest.raises(ValueError, match="devices are available"):
        parallel.make_mesh(jax.device_count() + 1)


def test_host_batch_becomes_a_sharded_global_array():
    mesh = parallel.make_mesh(8)
    batch = {"image": np.arange(16 * 2).reshape(16, 2)}
    global_batch = parallel.host_batch_to_global(batch, mesh)
    assert global_batch["image"].sharding.spec == jax.sharding.PartitionSpec(parallel.DATA_AXIS)
    assert len(global_batch["image"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(global_batch["image"]), batch["image"])
