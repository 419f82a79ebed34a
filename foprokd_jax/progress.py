"""Progress and ETA of a long run: steps/s over a sliding window, formatted durations."""

import math
import time
from typing import Callable, Optional


def format_duration(seconds: Optional[float]) -> str:
    """Compact h/m/s: 45s, 12m10s, 3h02m05s, 2d04h; '--' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--"
    seconds = int(round(max(seconds, 0.0)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressMeter:
    """Steps/sec and ETA from wall time between `update` calls.

    The first `update` only sets the reference point, so the step that includes XLA compilation (and
    anything before it) does not count. `steps_per_sec` is the rate over the last interval; the ETA uses
    the average rate since the reference point, which includes eval pauses and is steadier. If the step
    goes backwards (restart from a checkpoint) the reference point is reset.

    `clock` is injectable for tests (defaults to `time.monotonic`).
    """

    def __init__(self, total_steps: int, start_step: int = 0, clock: Callable[[], float] = time.monotonic):
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self._clock = clock
        self._first = None  # (step, time) of the reference call
        self._last = None  # (step, time) of the latest call
        self._stats = None

    def update(self, step: int) -> dict:
        """Records `step` reached now. Returns step, total_steps, percent, steps_this_run (since
        `start_step`), steps_per_sec, avg_steps_per_sec, elapsed_seconds (since the first call) and
        eta_seconds; the rates and ETA are None until a second call with a larger step."""
        step, now = int(step), self._clock()
        if self._last is None or step < self._last[0]:
            self._first = self._last = (step, now)
            steps_per_sec = avg_steps_per_sec = eta = None
        else:
            last_step, last_time = self._last
            first_step, first_time = self._first
            steps_per_sec = _rate(step - last_step, now - last_time)
            avg_steps_per_sec = _rate(step - first_step, now - first_time)
            remaining = max(self.total_steps - step, 0)
            eta = remaining / avg_steps_per_sec if avg_steps_per_sec else None
            self._last = (step, now)
        self._stats = {
            "step": step,
            "total_steps": self.total_steps,
            "percent": 100.0 * step / self.total_steps if self.total_steps else 100.0,
            "steps_this_run": step - self.start_step,
            "steps_per_sec": steps_per_sec,
            "avg_steps_per_sec": avg_steps_per_sec,
            "elapsed_seconds": now - self._first[1],
            "eta_seconds": eta,
        }
        return dict(self._stats)

    def format(self, step: int) -> str:
        """'step 120/3200 (3.8%) | 4.21 steps/s | ETA 12m10s'; updates the meter first if `step` is new."""
        if self._stats is None or self._stats["step"] != int(step):
            self.update(step)
        stats = self._stats
        rate = stats["steps_per_sec"]
        rate_text = f"{rate:.2f} steps/s" if rate is not None else "-- steps/s"
        return (
            f"step {stats['step']}/{stats['total_steps']} ({stats['percent']:.1f}%) | {rate_text} | "
            f"ETA {format_duration(stats['eta_seconds'])}"
        )


def _rate(steps: int, seconds: float) -> Optional[float]:
    if steps <= 0 or seconds <= 0:
        return None
    return steps / seconds
