"""Multi-host training with jax.distributed: two processes on this machine (one CPU device each, loopback
coordinator) against one process with two devices and the same global batch (issue 7 item 3, docs/pods.md).

The two-process job is preempted (SIGTERM to both processes) and rerun, so one test covers: the processes
agree on the step at which they stop (JAX's preemption sync point), the checkpoint is saved collectively
(one data-iterator state per process), the rerun resumes on both, only process 0 writes logs, and the final
parameters equal the single-process run's bit for bit. The last point also shows that each process fed its
own half of every global batch: the same half twice would change the gradients.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import cli_runs
from tests.test_resume import _checkpoint_arrays, _losses_by_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return cli_runs.write_tiny_isic(str(tmp_path_factory.mktemp("isic_multiprocess")))


def _env(tmp_path_factory, devices, **extra):
    return cli_runs.cli_env(tmp_path_factory, devices, **extra)


def _command(dataset, workdir):
    return [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        "--config=configs/isic.py:method=bsm,runlocal",
        f"--config.input.image_root={dataset}",
        f"--config.input.split_dir={dataset}/splits",
        f"--config.input.prepared_dir={dataset}/tfds",
        f"--config.total_steps={TOTAL_STEPS}",
        "--config.eval_every_steps=2",
        "--config.log_every_steps=1",
        f"--workdir={workdir}",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command, env, log_path):
    log = open(log_path, "w+")
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True), log


def _finish(started, timeout=600):
    """Waits for every (process, log); returns [(returncode, pid, log text)]; kills all on a timeout."""
    results = []
    try:
        for process, log in started:
            process.wait(timeout=timeout)
            log.seek(0)
            results.append((process.returncode, process.pid, log.read()))
    finally:
        for process, log in started:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    return results


def _two_processes(dataset, workdir, tmp_path, tmp_path_factory, name, fault=""):
    port = _free_port()
    return [
        _start(
            _command(dataset, workdir),
            _env(
                tmp_path_factory,
                devices=1,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                FOPROKD_FAULT=fault,
            ),
            tmp_path / f"{name}_{i}.log",
        )
        for i in (0, 1)
    ]


def test_two_processes_match_one_process_with_the_same_global_batch(dataset, tmp_path, tmp_path_factory):
    single_dir, multi_dir = str(tmp_path / "single"), str(tmp_path / "multi")
    single = [_start(_command(dataset, single_dir), _env(tmp_path_factory, devices=2), tmp_path / "single.log")]
    preempted = _finish(_two_processes(dataset, multi_dir, tmp_path, tmp_path_factory, "preempted", fault="sigterm@3"))
    for status, _, log in preempted:
        assert status == 143, log[-3000:]
        assert "jax.distributed initialised: process" in log and "2 global devices" in log
    # Both processes stopped at the same agreed step and saved one collective checkpoint.
    stopped = {int(log.split("SIGTERM: saved the checkpoint of step ")[1].split(",")[0]) for _, _, log in preempted}
    assert len(stopped) == 1
    step = stopped.pop()
    assert 3 <= step < TOTAL_STEPS
    data_iter = os.listdir(os.path.join(multi_dir, "checkpoints", str(step), "data_iter"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_iter)

    resumed = _finish(_two_processes(dataset, multi_dir, tmp_path, tmp_path_factory, "resumed"))
    for status, _, log in resumed:
        assert status == 0, log[-3000:]
        assert f"Resuming from step {step} of {TOTAL_STEPS}" in log
    ((single_status, _, single_log),) = _finish(single)
    assert single_status == 0, single_log[-3000:]

    # Two processes x one device == one process x two devices: all-reduces of two operands are exact.
    a, b = _checkpoint_arrays(single_dir, TOTAL_STEPS), _checkpoint_arrays(multi_dir, TOTAL_STEPS)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with open(os.path.join(single_dir, "results.json")) as f:
        single_results = json.load(f)
    with open(os.path.join(multi_dir, "results.json")) as f:
        multi_results = json.load(f)
    assert single_results["report"] == multi_results["report"]
    assert _losses_by_step(single_dir) == _losses_by_step(multi_dir)

    # Only process 0 writes logs: one TensorBoard event file per process-0 run, none from process 1.
    event_files = os.listdir(os.path.join(multi_dir, "tb"))
    process_1_pids = {pid for _, pid, _ in (preempted[1], resumed[1])}
    assert len(event_files) == 2
    assert not any(name.split(".")[-2] in {str(pid) for pid in process_1_pids} for name in event_files)
    with open(os.path.join(multi_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == list(range(1, TOTAL_STEPS + 1))  # process 1 logging too would duplicate every step
