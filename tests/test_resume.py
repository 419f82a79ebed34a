"""Exact resume after real kills of `launch/train.py` (docs/reliability.md, issue 7 items 1-2).

One uninterrupted reference run, and one workdir that is interrupted four times before it is allowed to
finish: SIGKILL during a train step, SIGKILL while the asynchronous checkpoint write is in flight, SIGKILL in
the middle of an evaluation, then a SIGTERM (preemption notice). Each interruption is a real signal to the
training subprocess, placed by the FOPROKD_FAULT hook so the point is known. The final parameters, the
reported metrics and the training loss of every step must equal the reference bit for bit (CPU).

The subprocesses share a JAX persistent compilation cache, so only the first run of the session compiles.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from foprokd_jax import checkpointing
from tests import cli_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 8
DEVICES = 2  # data parallel over 2 CPU devices: sharded restores, without 8-device compile costs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return cli_runs.write_tiny_isic(str(tmp_path_factory.mktemp("isic_resume")))


def _config_flags(root):
    return [
        "--config=configs/isic.py:method=bsm,runlocal",
        f"--config.input.image_root={root}",
        f"--config.input.split_dir={root}/splits",
        f"--config.input.prepared_dir={root}/tfds",
        f"--config.total_steps={TOTAL_STEPS}",
        "--config.eval_every_steps=2",
        "--config.log_every_steps=1",
    ]


def cli_env(tmp_path_factory, devices=DEVICES):
    return cli_runs.cli_env(tmp_path_factory, devices)


def _train_command(dataset, workdir):
    return [sys.executable, os.path.join(ROOT, "launch", "train.py"), *_config_flags(dataset), f"--workdir={workdir}"]


def _committed_steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def _checkpoint_arrays(workdir, step):
    """All leaves of a saved state, restored onto one CPU device (the run used DEVICES devices)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(path)
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored, is_leaf=lambda m: hasattr(m, "shape")
    )
    tree = checkpointer.restore(path, target)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _losses_by_step(workdir):
    """The last logged train/loss of every step (a resumed run logs the replayed steps again)."""
    losses = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "train/loss" in record:
                losses[record["step"]] = record["train/loss"]
    return losses


def _log_time(stderr, pattern):
    """Wall time (seconds of the day) of the first absl log line matching `pattern`."""
    match = re.search(r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*" + pattern, stderr, re.MULTILINE)
    assert match, f"no log line matching {pattern!r}"
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# (FOPROKD_FAULT, expected exit status). Checkpoints are written at the even steps.
INTERRUPTIONS = [
    ("step@3", -9),  # SIGKILL while step 3 runs (the step-2 checkpoint may still be in flight)
    ("checkpoint@4", -9),  # SIGKILL right after the step-4 save was issued: the write is in flight
    ("eval@6", -9),  # SIGKILL after the first batch of the step-6 evaluation
    ("sigterm@7", 143),  # SIGTERM after step 7 is dispatched: checkpoint 7, clean exit
]


def test_killed_and_preempted_runs_resume_bitwise(dataset, tmp_path, tmp_path_factory):
    reference_dir, chain_dir = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    env = cli_env(tmp_path_factory)
    # The reference runs concurrently (a file, not a pipe, takes its log: a full pipe would block it).
    reference_log = open(tmp_path / "reference.log", "w+")
    reference = subprocess.Popen(
        _train_command(dataset, reference_dir),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=reference_log,
        text=True,
    )
    try:
        for fault, expected_status in INTERRUPTIONS + [(None, 0)]:
            before = _committed_steps(chain_dir)
            run = subprocess.run(
                _train_command(dataset, chain_dir),
                env=dict(env, FOPROKD_FAULT=fault or ""),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert run.returncode == expected_status, (fault, run.stderr[-3000:])
            # The run restarted from the newest complete checkpoint, never from a half-written one.
            if before:
                assert f"Resuming from step {before[-1]} of {TOTAL_STEPS}" in run.stderr, fault
            else:
                assert "Resuming from step" not in run.stderr, fault
            listing = os.listdir(os.path.join(chain_dir, "checkpoints"))
            for step in _committed_steps(chain_dir):
                assert os.path.exists(os.path.join(chain_dir, "checkpoints", str(step), "commit_success.txt"))
            if fault == "checkpoint@4":
                assert "4.orbax-checkpoint-tmp" in listing, listing  # killed mid-write, not yet committed
                assert 4 not in _committed_steps(chain_dir)
            if fault == "sigterm@7":
                assert 7 in _committed_steps(chain_dir) and "Traceback" not in run.stderr
                assert "rerun the same command to resume" in run.stderr
                # Bound: SIGTERM -> checkpoint saved within one step + the checkpoint write.
                delay = _log_time(run.stderr, "SIGTERM: saved the checkpoint of step 7") - _log_time(
                    run.stderr, "FOPROKD_FAULT=sigterm@7"
                )
                assert 0 <= delay < 30, delay
            if fault is not None:
                assert not os.path.exists(os.path.join(chain_dir, "results.json"))
        reference.wait(timeout=600)
        reference_log.seek(0)
        assert reference.returncode == 0, reference_log.read()[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
        reference_log.close()

    final_a, final_b = _checkpoint_arrays(reference_dir, TOTAL_STEPS), _checkpoint_arrays(chain_dir, TOTAL_STEPS)
    assert final_a.keys() == final_b.keys() and len(final_a) > 10
    for key in final_a:
        np.testing.assert_array_equal(final_a[key], final_b[key], err_msg=key)
    with open(os.path.join(reference_dir, "results.json")) as f:
        results_a = json.load(f)
    with open(os.path.join(chain_dir, "results.json")) as f:
        results_b = json.load(f)
    for key in ("report", "selection", "best_step"):
        assert results_a[key] == results_b[key], key
    losses_a, losses_b = _losses_by_step(reference_dir), _losses_by_step(chain_dir)
    assert sorted(losses_a) == list(range(1, TOTAL_STEPS + 1)) and losses_a == losses_b


# --- The Checkpointer itself, in process, on tiny pytrees ---------------------------------------------------


def _tiny_state(value, size=3):
    return {"params": {"w": jnp.full((size,), value, jnp.float32)}, "step": jnp.int32(value)}


def test_old_checkpoints_are_renamed_to_the_trash_then_removed(tmp_path, monkeypatch):
    """Deletion is one atomic rename (a kill cannot leave a half-deleted, still listed step); the trash is
    emptied before the next save, and preemption checkpoints (no metric) never become the best."""
    monkeypatch.setattr(checkpointing.Checkpointer, "_empty_trash", lambda self: None)
    with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
        for step, bacc in [(1, 0.2), (2, 0.9), (3, 0.1), (4, 0.3), (5, None)]:
            ckpt.save(step, _tiny_state(step), None, bacc)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5] and ckpt.best_step() == 2 and ckpt.latest_step() == 5
    trash = tmp_path / "checkpoints" / checkpointing.TRASH_SUBDIR
    assert sorted(os.listdir(trash)) == ["1", "3"]
    monkeypatch.undo()
    with checkpointing.Checkpointer(str(tmp_path)) as ckpt:  # opening empties the trash
        assert os.listdir(trash) == [] and ckpt.all_steps() == [2, 4, 5]
        restored = ckpt.restore(2, _tiny_state(0))
    np.testing.assert_array_equal(restored["params"]["w"], np.full(3, 2.0))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the failed read's stragglers
def test_restore_errors_name_the_checkpoint_and_what_differs(tmp_path):
    with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(1, _tiny_state(1), None, 0.5)
    path = os.path.join(tmp_path, "checkpoints", "1")
    with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(checkpointing.CheckpointRestoreError) as info:
            ckpt.restore(1, _tiny_state(0, size=4))
        assert path in str(info.value) and "params/w: checkpoint (3,) vs model (4,)" in str(info.value)
        bigger = dict(_tiny_state(0), extra=jnp.zeros(2))
        with pytest.raises(checkpointing.CheckpointRestoreError, match=r"1 leaves missing from the checkpoint.*extra"):
            ckpt.restore(1, bigger)
    data_files = [
        os.path.join(parent, name)
        for parent, _, names in os.walk(path)
        for name in names
        if os.sep + "d" + os.sep in parent + os.sep
    ]
    for name in data_files:
        with open(name, "r+b") as f:
            f.truncate(1)
    with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(checkpointing.CheckpointRestoreError, match="cannot be read .* truncated or corrupt"):
            ckpt.restore(1, _tiny_state(0))


def test_crckd_resumes_bitwise_after_a_kill(tmp_path, tmp_path_factory):
    """CRCKD carries more state than the student: memory banks, Z constants, the EMA teacher, the one-cycle
    schedule and per-sample contrast indices. A SIGKILL mid-run and a rerun must still end bit for bit where
    an uninterrupted run ends."""
    from foprokd_jax.data import synthetic_benchmarks

    root = str(tmp_path / "aptos")
    synthetic_benchmarks.write_synthetic("aptos", root)
    env = cli_env(tmp_path_factory)

    def command(workdir):
        return [
            sys.executable,
            os.path.join(ROOT, "launch", "train.py"),
            "--config=configs/aptos.py:method=crckd,runlocal",
            f"--config.input.image_root={root}",
            f"--config.input.prepared_dir={tmp_path / 'tfds'}",
            "--config.total_steps=6",
            "--config.eval_every_steps=2",
            f"--workdir={workdir}",
        ]

    reference_dir, chain_dir = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    for workdir, fault, status in [(reference_dir, "", 0), (chain_dir, "step@5", -9), (chain_dir, "", 0)]:
        run = subprocess.run(
            command(workdir), env=dict(env, FOPROKD_FAULT=fault), cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == status, (fault, run.stderr[-3000:])
    # From step 4, or step 2 when the step-4 checkpoint write had not committed before the kill.
    assert re.search(r"Resuming from step [24] of 6", run.stderr), run.stderr[-2000:]
    final_a, final_b = _checkpoint_arrays(reference_dir, 6), _checkpoint_arrays(chain_dir, 6)
    assert final_a.keys() == final_b.keys() and any("mem_s" in key for key in final_a)
    for key in final_a:
        np.testing.assert_array_equal(final_a[key], final_b[key], err_msg=key)
    assert _losses_by_step(reference_dir) == _losses_by_step(chain_dir)
