"""Process-wide filters for the noise Orbax and tensorstore print after a failed restore (a truncated or wrong
checkpoint), so that the one `error:` line explaining the failure is not buried (docs/reliability.md).

`checkpointing.Checkpointer.restore` installs them when a restore fails; nothing else in the project touches
sys.stderr, sys.unraisablehook or the asyncio logger.
"""

import logging as pylogging
import sys
from typing import Optional


def silence_abandoned_reads() -> None:
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


class ClosedLoopReportFilter:
    """A sys.stderr stand-in that drops "RuntimeError: Event loop is closed" tracebacks.

    When a restore fails (a truncated file), tensorstore reads still in flight call back into Orbax's
    already closed asyncio loop, and each callback prints that traceback to sys.stderr (about a hundred of
    them), burying the one line that explains the failure. Everything else passes through unchanged.
    """

    _NOISE = (
        "Traceback (most recent call last):",
        "asyncio/base_events.py",
        "self._check_closed()",
        "raise RuntimeError('Event loop is closed')",
        "RuntimeError: Event loop is closed",
    )

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
