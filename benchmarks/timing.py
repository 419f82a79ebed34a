"""Timing one train step the same way for every framework: first call, warm-up, timed calls with contention.

`time_step(run_step, steps)` calls `run_step()` (which must block until its results are computed) once for
compilation (XLA) or first-touch allocation (torch), once more as a warm-up, then `steps` times, taking a
/proc CPU snapshot around each timed call (benchmarks/cpu_contention.py). The figures are medians: the
machines this runs on are shared, and one slow step from a neighbour's burst should not move the result.
"""

import dataclasses
import resource
import statistics
import time
from typing import Callable, List, Optional

from benchmarks import cpu_contention


@dataclasses.dataclass
class StepTiming:
    """What `time_step` measured; seconds unless named otherwise."""

    first_call_s: float  # compile + first step (XLA); first step (torch eager)
    step_s: List[float]  # wall time of each timed step
    cpu_s: List[float]  # CPU time this process used in each timed step (all threads)
    foreign: List[Optional[float]]  # other processes' share of the machine in each timed step
    region_foreign: Optional[float]  # the same over all timed steps together

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_s)

    def summary(self, batch_size: int, threshold: float) -> dict:
        """The row fields shared by every step benchmark (see benchmarks/report.py)."""
        median = self.median_step_s
        return {
            "img_per_s": round(batch_size / median, 2),
            "step_ms": round(1e3 * median, 1),
            "cpu_ms": round(1e3 * self.median_cpu_s, 1),
            "compile_s": round(self.first_call_s, 2),
            "foreign_share": None if self.region_foreign is None else round(self.region_foreign, 3),
            "contended": cpu_contention.is_contended(self.region_foreign, threshold),
            "steps_ms": [round(1e3 * s, 1) for s in self.step_s],
            "steps_foreign": [None if f is None else round(f, 3) for f in self.foreign],
        }


def time_step(run_step: Callable[[], object], steps: int, warmup: int = 1, calls_per_step: int = 1) -> StepTiming:
    """Times `run_step()`: one first call, `warmup` untimed calls, then `steps` timed calls (>= 1).

    calls_per_step > 1: each timed sample is that many consecutive calls, reported per call (for a step whose
    cost cycles, e.g. the FPG trained every k-th step: a sample of k calls holds exactly one FPG update).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if calls_per_step < 1:
        raise ValueError(f"calls_per_step must be >= 1, got {calls_per_step}")
    t0 = time.perf_counter()
    run_step()
    first = time.perf_counter() - t0
    for _ in range(warmup * calls_per_step):
        run_step()
    wall, cpu, foreign = [], [], []
    start = cpu_contention.snapshot()
    for _ in range(steps):
        before = cpu_contention.snapshot()
        for _ in range(calls_per_step):
            run_step()
        after = cpu_contention.snapshot()
        wall.append((after.wall_s - before.wall_s) / calls_per_step)
        cpu.append((after.own_cpu_s - before.own_cpu_s) / calls_per_step)
        foreign.append(cpu_contention.foreign_share(before, after))
    region = cpu_contention.foreign_share(start, cpu_contention.snapshot())
    return StepTiming(first, wall, cpu, foreign, region)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
