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
import os
import shutil
import sys
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from foprokd_jax import orbax_noise
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
        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(keep_latest),
                policies.BestN(get_metric_fn=_rank, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            best_fn=_rank,
            best_mode="max",
            create=True,
            enable_async_checkpointing=True,
            todelete_subdir=TRASH_SUBDIR,
        )
        # Explicit handlers (not just item names) so that `item_metadata` can describe a stored checkpoint
        # when a restore fails.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data_iter": grain.checkpoint.CheckpointHandler()},
        )
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
        sys.stderr = orbax_noise.ClosedLoopReportFilter(real_stderr)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as error:  # any failure: re-raised with the checkpoint named
            # The filters stay: reads of the failed restore still in flight keep reporting.
            orbax_noise.silence_abandoned_reads()
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
        except Exception:  # the metadata itself is unreadable: a truncated checkpoint
            diff = None
        others = [s for s in self.all_steps() if s != step]
        advice = (
            f"Remove {path} and rerun to continue from the other checkpoints (steps {others})"
            if others
            else f"Remove {path} and rerun to start this run from scratch"
        )
        if diff:
            return (
                f"checkpoint {path} does not match the model built from the config ({diff}); it was written "
                f"by a different architecture or code version. {advice}, or use another --workdir."
            )
        return (
            f"checkpoint {path} cannot be read ({type(root).__name__}: {first_line}); it is truncated or "
            f"corrupt. {advice}."
        )

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
        parts.append(
            f"{len(shapes)} shape mismatches, e.g. "
            + ", ".join(f"{k}: checkpoint {have[k]} vs model {want[k]}" for k in shapes[:limit])
        )
    return "; ".join(parts)
