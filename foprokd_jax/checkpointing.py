"""Every Orbax call of the project lives here, so an Orbax API change stays a local edit.

Layout: `workdir/checkpoints/<step>/{state,data_iter}` keeps the latest 2 checkpoints plus the best one by
validation balanced accuracy. `state` is the whole `TrainState` (student, optimizer, step); `data_iter` is
the grain iterator position (one JSON file per process), so a rerun of the same command resumes exactly
where the previous run stopped. Teachers are never checkpointed.
"""
import os
from typing import Any, Optional

import grain
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from foprokd_jax.state import abstract_like

SELECTION_METRIC = "selection_bacc"


def _rank(metrics: dict):
    # Ties go to the earliest step, like the reference's strict `>` model selection
    # (`methods/free.py:591-594`): rank by (bacc, -step).
    return (metrics[SELECTION_METRIC], -metrics["step"])


class Checkpointer:
    """Latest-2 + best-1 checkpoint manager for one workdir."""

    def __init__(self, workdir: str, keep_latest: int = 2, metadata: Optional[dict] = None):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        preservation = policies.AnyPreservationPolicy([
            policies.LatestN(keep_latest),
            policies.BestN(get_metric_fn=_rank, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation, best_fn=_rank, best_mode="max", create=True,
            enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, metadata=metadata or {},
                                              item_names=("state", "data_iter"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def best_step(self) -> Optional[int]:
        return self._manager.best_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any, selection_bacc: float) -> None:
        """Saves asynchronously; the selection metric ranks checkpoints for the best-1 policy."""
        args = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self._manager.save(step, args=ocp.args.Composite(**args),
                           metrics={SELECTION_METRIC: float(selection_bacc), "step": int(step)}, force=True)

    def restore(self, step: int, state_like: Any, data_iter: Any = None) -> Any:
        """Restores `state` (onto the shardings of `state_like`) and, if given, the data iterator in place."""
        args = {"state": ocp.args.StandardRestore(abstract_like(state_like))}
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        logging.info("Restored checkpoint step %d from %s", step, self.directory)
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
