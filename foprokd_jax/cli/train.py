"""Train and evaluate one experiment.

    python launch/train.py --config=configs/isic.py:method=ekd,imb=0.002,fold=1 --workdir=workdirs/ekd_f1
    python launch/train.py                      # the embedded default: configs/demo.py (synthetic data)

`--config.x=...` overrides any key (`--config.input.batch_size=64`); unknown keys are errors. Rerunning the
same command with the same --workdir resumes from its latest checkpoint. A workdir holding a run made with a
different config is refused unless `--overwrite` is given, which renames the old run to
`<workdir>.replaced-<date>-<time>` (nothing is deleted) and starts afresh; a run with the same config still
resumes, so `--overwrite` is safe in a requeued job script.

Exit status: 0 done; 1 bad input (config, files, workdir, checkpoint) or a non-finite loss, with one line
`error: ...` on stderr and nothing written; 143 after a SIGTERM, once the checkpoint is saved (rerun the
same command to resume). docs/reliability.md lists every fault and what happens.
"""

import ast
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from foprokd_jax import xla_flags

xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads XLA_FLAGS once (docs/performance.md)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from foprokd_jax.cli import config_path  # noqa: E402

_BAD_CONFIG_ERRORS = (AttributeError, KeyError, ValueError, TypeError, OSError)


def _plain_message(error: Exception) -> str:
    """One line: KeyError/AttributeError messages arrive as a quoted repr (unquoted here), some span lines."""
    message = str(error)
    try:
        value = ast.literal_eval(message)
    except (ValueError, SyntaxError):
        value = message
    message = value if isinstance(value, str) else message
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _exit_bad_config(error: Exception):
    sys.stderr.write(f"error: bad --config: {_plain_message(error)}\n")
    sys.exit(1)


try:  # without --config, ml_collections applies --config.x overrides to the default right here
    config_flags.DEFINE_config_file(
        "config", config_path.DEMO_CONFIG, "Experiment config file (path[:args]).", lock_config=True
    )
except _BAD_CONFIG_ERRORS as _error:
    _exit_bad_config(_error)
flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, metrics.jsonl, TensorBoard files and results go. Default: workdirs/<config name>.",
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "If --workdir holds a run made with a different config, move it aside "
    "(renamed to <workdir>.replaced-<date>-<time>) and start afresh instead of refusing. A run with "
    "the same config is resumed either way.",
)
flags.DEFINE_string(
    "compilation_cache",
    None,
    "Persistent XLA compilation cache folder, so that reruns, resumes "
    "and other folds skip compiling the step. Default: $JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/foprokd_jax/xla; '' turns it off (foprokd_jax/compilation_cache.py).",
)
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a process ended by SIGTERM


def parse_flags(argv):
    """absl's flag parsing, but a bad --config (unknown key or :argument, missing file, wrong type) is one
    `error: ...` line and exit status 1 instead of a traceback from inside ml_collections."""
    try:
        remaining = flags.FLAGS(config_path.resolve_argv(argv))
        flags.FLAGS.config.get("name")  # the config file and its overrides load lazily: fail here, cleanly
        return remaining
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
    except _BAD_CONFIG_ERRORS as e:
        _exit_bad_config(e)
    sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from foprokd_jax import library_logs, parallel

    library_logs.quiet_library_logs()
    parallel.maybe_initialize_distributed()
    from foprokd_jax import compilation_cache, demo, train

    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or os.path.join("workdirs", config.get("name", "run"))
    logging.info("workdir: %s", os.path.abspath(workdir))
    try:
        compilation_cache.enable(flags.FLAGS.compilation_cache)  # before the first compilation
        if config.get("demo"):
            demo.run_demo(config, workdir, overwrite=flags.FLAGS.overwrite)
        else:
            train.train_and_evaluate(config, workdir, overwrite=flags.FLAGS.overwrite)
    except train.TrainingPreempted as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(PREEMPTED_EXIT_CODE)
    except (FileNotFoundError, ValueError, KeyError, FloatingPointError) as e:
        # Bad input (missing file, corrupt image, wrong checkpoint, bad value) or a non-finite loss: one
        # clear line, exit 1. Anything else is a bug and keeps its traceback.
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/train.py`."""
    flags.mark_flags_as_required([])
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
