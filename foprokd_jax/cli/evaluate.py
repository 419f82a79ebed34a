"""Evaluate a trained run on one split of its dataset, from its workdir alone.

    python launch/evaluate.py --workdir=workdirs/isic_ekd_f1                       # best checkpoint, test split
    python launch/evaluate.py --workdir=workdirs/isic_ekd_f1 --checkpoint=latest --split=val
    python launch/evaluate.py --workdir=workdirs/crckd_aptos_f1 --checkpoint=4000 --out_dir=/tmp/eval

The dataset and the method are rebuilt from <workdir>/config.json (the data and, for ekd/fopro, the teacher
artifact must be where training found them), the checkpoint is restored, and every example of the split is
scored once. Writes into --out_dir (default <workdir>/eval/<split>_step<step>): metrics.json (all of
metrics.full_report: balanced accuracy, macro-F1/precision/recall/specificity, MCC, kappa, macro OvR AUC,
per-class and head/medium/tail recall, confusion), confusion_matrix.png, per_class_recall.png and
predictions.csv (image id, label, prediction, per-class probabilities). Docs: docs/evaluation.md.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from foprokd_jax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads XLA_FLAGS once (docs/performance.md)

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a run made by launch/train.py (holds config.json).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best' (by selection balanced accuracy), 'latest' or a "
                                  "step number.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate: train, val or test.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (default <workdir>/eval/<split>_step<step>).")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 0, "Global eval batch size (0 = the run's "
                                   "config.input.eval_batch_size); a multiple of the device count.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from foprokd_jax import library_logs, parallel

    library_logs.quiet_library_logs()
    parallel.maybe_initialize_distributed()
    from foprokd_jax import evaluation

    try:
        result = evaluation.evaluate_run(_WORKDIR.value, _CHECKPOINT.value, _SPLIT.value, _OUT_DIR.value,
                                         _EVAL_BATCH.value or None)
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    scores = ", ".join(f"{key} {result[key]:.4f}" for key in ("bacc", "macro_f1", "mcc", "auc", "tail_recall")
                       if result.get(key) is not None)
    print(f"{result['split']} split, checkpoint step {result['checkpoint_step']}, {result['num_examples']} "
          f"examples: {scores}")
    for path in result["files"].values():
        print(path)


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/evaluate.py`."""
    flags.mark_flags_as_required(["workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
