"""Train and evaluate one experiment.

    python launch/train.py --config=configs/isic.py:method=ekd,imb=0.002,fold=1 --workdir=workdirs/ekd_f1
    python launch/train.py                      # the embedded default: configs/demo.py (synthetic data)

`--config.x=...` overrides any key (`--config.input.batch_size=64`); unknown keys are errors. Rerunning the
same command with the same --workdir resumes from its latest checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
config_flags.DEFINE_config_file("config", _DEMO_CONFIG, "Experiment config file (path[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard files and results go. "
                    "Default: workdirs/<config name>.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from foprokd_jax import logging_utils, parallel
    logging_utils.quiet_library_logs()
    parallel.maybe_initialize_distributed()
    from foprokd_jax import demo, train

    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or os.path.join("workdirs", config.get("name", "run"))
    logging.info("workdir: %s", os.path.abspath(workdir))
    try:
        if config.get("demo"):
            demo.run_demo(config, workdir)
        else:
            train.train_and_evaluate(config, workdir)
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Bad input (missing file, corrupt image, wrong checkpoint, bad value): one clear line, exit 1.
        # Anything else is a bug and keeps its traceback.
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required([])
    app.run(main)
