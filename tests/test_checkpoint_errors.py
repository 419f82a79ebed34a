"""The asyncio reports left behind by a failed Orbax restore are recognised, and only those.

A truncated checkpoint makes several of Orbax's concurrent reads fail; one error is raised (and reported by
checkpointing.Checkpointer.restore as a CheckpointRestoreError), the others are reported by asyncio when their
futures are collected. Which kind of future reports depends on timing, so the predicate is tested on records
carrying real Orbax exceptions, and the installed filter on futures abandoned on purpose in a subprocess; the
end-to-end check (a truncated checkpoint given to launch/train.py) is tests/test_cli_bad_inputs.py.
"""

import logging
import os
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

from foprokd_jax import orbax_noise


def _orbax_error(tmp_path):
    """A real exception raised inside Orbax (restoring a folder that does not exist)."""
    try:
        ocp.StandardCheckpointer().restore(str(tmp_path / "missing"))
    except Exception as error:
        return error
    pytest.fail("Orbax restored a missing checkpoint")


def _wrapped(error):
    """An exception raised outside Orbax *from* an Orbax one: the predicate follows the cause chain."""
    try:
        raise RuntimeError("outer") from error
    except RuntimeError as outer:
        return outer


def _plain_error():
    try:
        raise ValueError("a bug elsewhere")
    except ValueError as error:
        return error


def _record(message, error=None):
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1771, message, None, exc_info)


def test_gathering_future_reports_of_orbax_reads_are_recognised(tmp_path):
    error = _orbax_error(tmp_path)
    gathering = "_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished exception=%r>"
    assert orbax_noise.is_abandoned_orbax_read(_record(gathering % error, error))
    assert orbax_noise.is_abandoned_orbax_read(_record(gathering % error, _wrapped(error)))
    # The same report about an exception that never passed through Orbax is someone else's bug: kept.
    plain = _plain_error()
    assert not orbax_noise.is_abandoned_orbax_read(_record(gathering % plain, plain))
    assert not orbax_noise.is_abandoned_orbax_read(_record(gathering % plain))


def test_task_reports_name_the_orbax_coroutine_and_other_reports_pass(tmp_path):
    task = (
        "Task exception was never retrieved\nfuture: <Task finished name='Task-7' "
        "coro=<_read_array_index_and_device_put() done, defined at "
        "/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py:300>>"
    )
    assert orbax_noise.is_abandoned_orbax_read(_record(task, _plain_error()))
    # Other asyncio messages are never dropped, even with an Orbax exception attached.
    error = _orbax_error(tmp_path)
    assert not orbax_noise.is_abandoned_orbax_read(_record("Exception in callback Foo()", error))
    assert not orbax_noise.is_abandoned_orbax_read(_record("Executing <Task ...> took 0.2 seconds"))


_ABANDONED_FUTURES = r"""
import asyncio, gc, sys, tempfile
import orbax.checkpoint as ocp
from foprokd_jax import orbax_noise

async def orbax_read():
    ocp.StandardCheckpointer().restore(tempfile.mkdtemp() + "/missing")  # raises inside Orbax

async def other_read():
    raise ValueError("a bug elsewhere")

async def abandon(coroutine):
    future = asyncio.gather(coroutine())
    await asyncio.sleep(0.05)  # it fails; nobody retrieves the exception

if sys.argv[1] == "silenced":
    orbax_noise.silence_abandoned_reads()
asyncio.run(abandon(orbax_read))
asyncio.run(abandon(other_read))
gc.collect()
print("done")
"""


@pytest.mark.parametrize("mode", ["silenced", "default"])
def test_abandoned_gathering_futures_are_dropped_only_for_orbax(mode):
    run = subprocess.run(
        [sys.executable, "-c", _ABANDONED_FUTURES, mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert run.returncode == 0 and "done" in run.stdout, run.stderr[-2000:]
    reports = [line for line in run.stderr.splitlines() if "exception was never retrieved" in line]
    # Without the filter asyncio reports both abandoned futures (so this test can see the difference).
    assert len(reports) == (1 if mode == "silenced" else 2), run.stderr[-3000:]
    assert "a bug elsewhere" in run.stderr
    orbax_frames = [line for line in run.stderr.splitlines() if line.strip().startswith("File") and "orbax" in line]
    assert bool(orbax_frames) == (mode == "default"), run.stderr[-3000:]
