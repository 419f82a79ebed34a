"""SIGTERM (the usual preemption notice) -> a checkpoint at the next step boundary (docs/reliability.md)."""

import signal
import threading

import jax
from absl import logging


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
