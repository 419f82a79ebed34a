"""Every-step NaN/Inf guard of the training loop (docs/reliability.md)."""

from typing import Callable, Optional

import numpy as np


class FiniteGuard:
    """Every-step NaN/Inf guard on the metrics dict a train step returns (all of its float scalars).

    `check(step, metrics)` fetches the (few, scalar) metrics to the host in one `jax.device_get`, raises
    FloatingPointError naming the step and every non-finite term (e.g. "loss=nan, grad_norm=inf"), and
    otherwise returns the host values (reused for logging, so a log step costs no second transfer). The
    training loop calls it one step late, after dispatching the next step, so the transfer overlaps with
    device work; see `train._train_loop`.
    """

    def __init__(self, last_good_step: Optional[int] = None, fetch: Optional[Callable] = None):
        self.last_good_step = last_good_step
        self._fetch = fetch

    def check(self, step: int, metrics: dict) -> dict:
        if self._fetch is None:
            import jax  # lazily: the rest of this module needs no JAX

            self._fetch = jax.device_get
        host = self._fetch(metrics)
        bad = []
        for key, value in host.items():
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                bad.append(f"{key}={array.tolist()}")
        if bad:
            since = (
                f"last finite step {self.last_good_step}"
                if self.last_good_step is not None
                else "no earlier finite step"
            )
            raise FloatingPointError(f"non-finite training metrics at step {step}: {', '.join(bad)} ({since})")
        self.last_good_step = step
        return host
