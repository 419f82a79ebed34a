"""Test hook for the fault tests (tests/test_resume.py, test_cli_bad_inputs.py; docs/reliability.md).

FOPROKD_FAULT=<point>@<step> makes the training process kill itself with SIGKILL at that point of that step
('step': the train step is dispatched but not finished; 'checkpoint': the asynchronous checkpoint write is in
flight; 'eval': after the first batch of the evaluation), send itself SIGTERM ('sigterm': right after the step
is dispatched), or set every float in the state to NaN before the step ('nan'). Unset in normal runs.
"""

import os
import signal

from absl import logging

FAULT_ENV = "FOPROKD_FAULT"


def armed(point: str, step: int) -> bool:
    return os.environ.get(FAULT_ENV) == f"{point}@{step}"


def maybe_inject(point: str, step: int) -> None:
    if armed(point, step):
        logging.warning("%s=%s@%d: injecting the fault now", FAULT_ENV, point, step)
        os.kill(os.getpid(), signal.SIGTERM if point == "sigterm" else signal.SIGKILL)
