"""Every Orbax call of the project lives here, so an Orbax API change stays a local edit.

Layout: `workdir/checkpoints/<step>/{state,data_iter}` keeps the latest 2 checkpoints plus the best one by
validation balanced accuracy. `state` is the whole `TrainState` (student, optimizer, step); `data_iter` is
the grain iterator position (one JSON file per process), so a rerun of the same command resumes exactly
where the previous run stopped. Teachers are never checkpointed.

Crash safety (checked against orbax 0.12.8 by experiment, docs/reliability.md):
- A save writes into `<step>.orbax-checkpoint-tmp/`, writes `commit_success.txt`, then renames the folder to
  `<step>/` (one atomic rename on a POSIX filesystem). A process killed mid-write leaves only the tmp folder,
  which `latest_step()` never lists; saving that step again replaces it.
- Old checkpoints are *renamed* into `checkpoints/.trash/` (`todelete_subdir`) instead of being deleted in
  place: orbax's in-place delete removes files one by one, and a kill half-way would leave a `<step>/`
  folder that is listed as a checkpoint but cannot be restored. The trash is emptied by process 0 when the
  manager opens and before each save, when no deletion can be in flight.
- Orbax's own root metadata file is written non-atomically when a manager first opens a folder (a kill
  there would make every later open fail), so the run metadata is written here instead, atomically, to
  `checkpoints/run_metadata.json`.
"""
import json
import logging as pylogging
import os
import shutil
import signal
import sys
import threading
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from foprokd_jax.state import abstract_like

SELECTION_METRIC = "selection_bacc"
TRASH_SUBDIR = ".trash"
RUN_METADATA_FILE = "run_metadata.json"


class CheckpointRestoreError(ValueError):
    """A checkpoint exists but cannot be restored into the model the config builds (or is unreadable)."""


def _rank(metrics: dict):
    # Ties go to the earliest step, like the reference's strict `>` model selection
    # (`methods/free.py:591-594`): rank by (bacc, -step).
    return (metrics[SELECTION_METRIC], -metrics["step"])


class Checkpointer:
    """Latest-2 + best-1 checkpoint manager for one workdir (all processes create one; Orbax coordinates)."""

    def __init__(self, workdir: str, keep_latest: int = 2, metadata: Optional[dict] = None):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._is_primary = jax.process_index() == 0
        preservation = policies.AnyPreservationPolicy([
            policies.LatestN(keep_latest),
            policies.BestN(get_metric_fn=_rank, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation, best_fn=_rank, best_mode="max", create=True,
            enable_async_checkpointing=True, todelete_subdir=TRASH_SUBDIR)
        # Explicit handlers (not just item names) so that `item_metadata` can describe a stored checkpoint
        # when a restore fails.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data_iter": grain.checkpoint.CheckpointHandler()})
        self._empty_trash()
        if metadata is not None:
            self.write_metadata(metadata)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def best_step(self) -> Optional[int]:
        return self._manager.best_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, data_iter: Any, selection_bacc: Optional[float]) -> None:
        """Saves asynchronously. `selection_bacc` ranks checkpoints for the best-1 policy; None (a
        preemption checkpoint between evaluations) is never a candidate for the best checkpoint."""
        # Orbax waits for the previous save (and its deletions into the trash) before starting this one;
        # waiting first ourselves makes emptying the trash race-free.
        self._manager.wait_until_finished()
        self._empty_trash()
        args = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        metrics = None
        if selection_bacc is not None:
            metrics = {SELECTION_METRIC: float(selection_bacc), "step": int(step)}
        self._manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)

    def restore(self, step: int, state_like: Any, data_iter: Any = None) -> Any:
        """Restores `state` (onto the shardings of `state_like`) and, if given, the data iterator in place.

        Raises CheckpointRestoreError naming the step folder and, when the stored tree can be read, the
        leaves whose names or shapes differ from the model the config builds.
        """
        args = {"state": ocp.args.StandardRestore(abstract_like(state_like))}
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        real_stderr = sys.stderr
        sys.stderr = _ClosedLoopReportFilter(real_stderr)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as error:  # noqa: BLE001 - re-raised with the checkpoint named
            # The filters stay: reads of the failed restore still in flight keep reporting.
            _silence_abandoned_reads()
            raise CheckpointRestoreError(self._describe_restore_failure(step, state_like, error)) from error
        sys.stderr = real_stderr
        logging.info("Restored checkpoint step %d from %s", step, self.directory)
        return restored["state"]

    def _describe_restore_failure(self, step: int, state_like: Any, error: Exception) -> str:
        path = self.step_dir(step)
        root = error
        while (root.__cause__ or root.__context__) is not None:  # the storage error, not Orbax's wrappers
            root = root.__cause__ or root.__context__
        first_line = (str(root).strip().splitlines() or [""])[0][:300]
        try:
            stored = self._manager.item_metadata(step)["state"]
            stored_tree = getattr(stored, "tree", stored)
            diff = tree_difference(stored_tree, state_like)
        except Exception:  # noqa: BLE001 - the metadata itself is unreadable: a truncated checkpoint
            diff = None
        others = [s for s in self.all_steps() if s != step]
        advice = (f"Remove {path} and rerun to continue from the other checkpoints (steps {others})" if others
                  else f"Remove {path} and rerun to start this run from scratch")
        if diff:
            return (f"checkpoint {path} does not match the model built from the config ({diff}); it was written "
                    f"by a different architecture or code version. {advice}, or use another --workdir.")
        return (f"checkpoint {path} cannot be read ({type(root).__name__}: {first_line}); it is truncated or "
                f"corrupt. {advice}.")

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        self._empty_trash()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _empty_trash(self) -> None:
        """Removes checkpoints Orbax has moved to the trash (process 0 only, like Orbax's deleter)."""
        trash = os.path.join(self.directory, TRASH_SUBDIR)
        if not self._is_primary or not os.path.isdir(trash):
            return
        for name in os.listdir(trash):
            shutil.rmtree(os.path.join(trash, name), ignore_errors=True)

    def write_metadata(self, metadata: dict) -> None:
        """Writes JSON-able run facts (teacher artifact, dataset) to checkpoints/run_metadata.json, atomically."""
        if not self._is_primary:
            return
        path = os.path.join(self.directory, RUN_METADATA_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True, default=str)
        os.replace(path + ".tmp", path)


def _leaf_shapes(tree: Any) -> dict:
    """'a/b/c' -> shape for every array-like leaf (names normalised across dicts, dataclasses, tuples)."""
    def name(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def tree_difference(stored: Any, expected: Any, limit: int = 4) -> str:
    """Human-readable difference between a stored checkpoint tree and the expected one ('' if none found)."""
    have, want = _leaf_shapes(stored), _leaf_shapes(expected)
    parts = []
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing:
        parts.append(f"{len(missing)} leaves missing from the checkpoint, e.g. {missing[:limit]}")
    if extra:
        parts.append(f"{len(extra)} unexpected leaves in the checkpoint, e.g. {extra[:limit]}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches, e.g. " +
                     ", ".join(f"{k}: checkpoint {have[k]} vs model {want[k]}" for k in shapes[:limit]))
    return "; ".join(parts)


class PreemptionWatch:
    """Turns SIGTERM (the usual preemption notice) into "save a checkpoint at the next step boundary".

    Single process: a Python SIGTERM handler sets a flag (installed on enter, the previous handler restored
    on exit, so a SIGTERM after training ends terminates at once). Several processes (jax.distributed):
    JAX's preemption sync manager already catches SIGTERM and agrees on one step at which every process
    stops (`multihost_utils.reached_preemption_sync_point`, to be called at every step), so collectives
    never deadlock on a process that left early.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._installed = False
        self._previous = None
        self._multi = jax.process_count() > 1

    def __enter__(self):
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def _on_sigterm(self, signum, frame):
        logging.warning("SIGTERM received: a checkpoint is saved after the current step")
        self._flag.set()

    def requested(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # preemption service disabled (jax_enable_preemption_service=False)
                return False
        return self._flag.is_set()

    def __exit__(self, *exc):
        if self._installed:
            # None: the previous handler was not set from Python; the default action is the safe fallback.
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def _silence_abandoned_reads() -> None:
    """After a failed restore, Orbax's other read coroutines are abandoned and each later reports the same
    storage error at length, as "Exception ignored in: <coroutine ...>" (sys.unraisablehook) or as "Task
    exception was never retrieved" / "_GatheringFuture exception was never retrieved" (the asyncio logger).
    Drop those reports when they come from Orbax; the CheckpointRestoreError already says what is wrong."""
    previous = sys.unraisablehook

    def unraisable_hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and "orbax" in code.co_filename:
            return
        previous(unraisable)

    sys.unraisablehook = unraisable_hook
    pylogging.getLogger("asyncio").addFilter(lambda record: not is_abandoned_orbax_read(record))


def _raised_in_orbax(error: Optional[BaseException]) -> bool:
    """Whether `error`, or an exception it was raised from, passed through an Orbax source file."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        frame = error.__traceback__
        while frame is not None:
            if "orbax" in frame.tb_frame.f_code.co_filename:
                return True
            frame = frame.tb_next
        error = error.__cause__ or error.__context__
    return False


def is_abandoned_orbax_read(record: pylogging.LogRecord) -> bool:
    """An asyncio "... exception was never retrieved" report about an Orbax read.

    A Task's message names its coroutine (an Orbax function); a gathering future's names only the exception,
    so its traceback is checked for Orbax frames. Any other asyncio report passes.
    """
    message = record.getMessage()
    if "exception was never retrieved" not in message:
        return False
    if "orbax" in message:
        return True
    error = record.exc_info[1] if record.exc_info else None
    return _raised_in_orbax(error)


class _ClosedLoopReportFilter:
    """A sys.stderr stand-in that drops "RuntimeError: Event loop is closed" tracebacks.

    When a restore fails (a truncated file), tensorstore reads still in flight call back into Orbax's
    already closed asyncio loop, and each callback prints that traceback to sys.stderr (about a hundred of
    them), burying the one line that explains the failure. Everything else passes through unchanged.
    """
    _NOISE = ("Traceback (most recent call last):", "asyncio/base_events.py", "self._check_closed()",
              "raise RuntimeError('Event loop is closed')", "RuntimeError: Event loop is closed")

    def __init__(self, stream):
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not any(noise in line for noise in self._NOISE):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending and not any(noise in self._pending for noise in self._NOISE):
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)
