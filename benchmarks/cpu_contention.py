"""How much of the machine's CPU *other* processes used while we timed something (Linux /proc).

The project's benchmarks run on small shared machines (docs/performance.md), where another job can hold a
core and slow a step several-fold. Rather than averaging such steps in silently, every timed region records

    foreign share = (busy ticks of all cores - ticks of this process) / (all ticks of all cores)

over the region: 0.0 is a quiet machine, 0.5 on a 2-core machine is one core fully used by someone else.
Busy ticks are user + nice + system + irq + softirq + steal from the aggregate `cpu` line of /proc/stat
(steal counts: on a VM it is time the host gave to other guests); guest time is already inside user.
This process's ticks are utime + stime + cutime + cstime of /proc/self/stat (all threads, and children
once reaped). This process's own CPU time is also read from getrusage, whose microsecond resolution suits
short regions (CPU time per step is less sensitive to contention than wall time). A region is "contended"
when its share exceeds a threshold (8% by default, the rule of the Intel-host measurement in
docs/performance.md §3).
"""

import dataclasses
import os
import resource
import time
from typing import Optional

DEFAULT_THRESHOLD = 0.08

# Positions in the aggregate `cpu` line of /proc/stat (after the label), see proc(5).
_USER, _NICE, _SYSTEM, _IDLE, _IOWAIT, _IRQ, _SOFTIRQ, _STEAL = range(8)


@dataclasses.dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU counters at one instant, in clock ticks (jiffies), plus the wall clock."""

    busy_ticks: int  # all cores: time not idle
    total_ticks: int  # all cores: busy + idle + iowait
    own_ticks: int  # this process (all threads, reaped children)
    wall_s: float
    own_cpu_s: float = 0.0  # this process's user + system time from getrusage (microsecond resolution)


def parse_proc_stat(text: str) -> tuple:
    """(busy, total) ticks from the text of /proc/stat (its aggregate `cpu ` line)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (8 - len(values))  # very old kernels omit steal
            busy = sum(values[i] for i in (_USER, _NICE, _SYSTEM, _IRQ, _SOFTIRQ, _STEAL))
            return busy, busy + values[_IDLE] + values[_IOWAIT]
    raise ValueError("/proc/stat has no aggregate 'cpu ' line")


def parse_proc_pid_stat(text: str) -> int:
    """utime + stime + cutime + cstime ticks from the text of /proc/<pid>/stat.

    The command name (field 2) may contain spaces and parentheses, so fields are counted after the last ')'.
    """
    closing = text.rfind(")")
    if closing < 0:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    fields = text[closing + 1 :].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14..17.
    return sum(int(v) for v in fields[11:15])


def snapshot(pid: Optional[int] = None) -> CpuSnapshot:
    """Reads the counters now (for this process, or `pid`)."""
    with open("/proc/stat") as f:
        busy, total = parse_proc_stat(f.read())
    with open(f"/proc/{pid or 'self'}/stat") as f:
        own = parse_proc_pid_stat(f.read())
    usage = resource.getrusage(resource.RUSAGE_SELF) if pid is None else None
    own_cpu = usage.ru_utime + usage.ru_stime if usage else own / os.sysconf("SC_CLK_TCK")
    return CpuSnapshot(busy, total, own, time.perf_counter(), own_cpu)


def foreign_share(before: CpuSnapshot, after: CpuSnapshot) -> Optional[float]:
    """The fraction of all cores' time between two snapshots used by other processes, in [0, 1].

    None when no tick elapsed (a region shorter than one jiffy, 10 ms, cannot be judged).
    """
    total = after.total_ticks - before.total_ticks
    if total <= 0:
        return None
    foreign = (after.busy_ticks - before.busy_ticks) - (after.own_ticks - before.own_ticks)
    return min(1.0, max(0.0, foreign / total))


def own_cores(before: CpuSnapshot, after: CpuSnapshot) -> Optional[float]:
    """How many cores this process kept busy on average between two snapshots (CPU time / wall time)."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return None
    return (after.own_cpu_s - before.own_cpu_s) / wall


def is_contended(share: Optional[float], threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether a region's foreign share makes its timing unreliable (unknown counts as contended)."""
    return share is None or share > threshold


def available() -> bool:
    """Whether /proc counters can be read here (Linux); elsewhere the benchmark reports no contention figure."""
    try:
        snapshot()
        return True
    except (OSError, ValueError):
        return False
