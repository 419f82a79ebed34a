"""Evaluate a trained run on one split of its dataset, from its workdir alone.

    python launch/evaluate.py --workdir=workdirs/isic_ekd_f1                       # best checkpoint, test split
    python launch/evaluate.py --workdir=workdirs/isic_ekd_f1 --checkpoint=latest --split=val
    python launch/evaluate.py --workdir=workdirs/crckd_aptos_f1 --checkpoint=4000 --out_dir=/tmp/eval

The dataset and the method are rebuilt from <workdir>/config.json (the data and, for ekd/fopro, the teacher
artifact must be where training found them), the checkpoint is restored, and every example of the split is
scored once. Writes into --out_dir (default <workdir>/eval/<split>_step<step>): metrics.json (all of
metrics.full_report: balanced accuracy, macro-F1/precision/recall/specificity, MCC, kappa, macro OvR AUC,
per-class and head/medium/tail recall, confusion; calibration: ECE with equal-width and equal-mass bins,
Brier, NLL, and the same after temperature scaling fitted on --calibrate_on; stratified bootstrap intervals of
balanced accuracy, macro-F1 and every class's recall), confusion_matrix.png, per_class_recall.png (with the
bootstrap intervals as error bars), reliability_diagram.png and predictions.csv (image id, label, prediction,
per-class probabilities). Docs: docs/evaluation.md.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from foprokd_jax import xla_flags

xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads XLA_FLAGS once (docs/performance.md)

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a run made by launch/train.py (holds config.json).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "best", "'best' (by selection balanced accuracy), 'latest' or a step number."
)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate: train, val or test.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (default <workdir>/eval/<split>_step<step>).")
_EVAL_BATCH = flags.DEFINE_integer(
    "eval_batch_size",
    0,
    "Global eval batch size (0 = the run's config.input.eval_batch_size); a multiple of the device count.",
)

_CALIBRATE_ON = flags.DEFINE_string(
    "calibrate_on",
    "val",
    "Split on which the temperature of temperature scaling is fitted ('' = none); skipped when it is --split itself.",
)
_NUM_BINS = flags.DEFINE_integer("num_bins", 15, "Confidence bins of the ECE and the reliability diagram.")
_RESAMPLES = flags.DEFINE_integer("bootstrap_resamples", 1000, "Stratified bootstrap replicates (0 = none).")
_SEED = flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap's random generator.")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.95, "Confidence level of the bootstrap intervals.")


def _check_statistics_flags():
    """Bad values are refused before any work is done."""
    if _NUM_BINS.value < 1:
        raise ValueError(f"--num_bins must be >= 1, got {_NUM_BINS.value}")
    if _RESAMPLES.value < 0 or _RESAMPLES.value == 1:
        raise ValueError(f"--bootstrap_resamples must be 0 or >= 2, got {_RESAMPLES.value}")
    if not 0.0 < _CONFIDENCE.value < 1.0:
        raise ValueError(f"--confidence must lie in (0, 1), got {_CONFIDENCE.value}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from foprokd_jax import library_logs, parallel

    library_logs.quiet_library_logs()
    parallel.maybe_initialize_distributed()
    from foprokd_jax import evaluation

    try:
        _check_statistics_flags()
        result = evaluation.evaluate_run(
            _WORKDIR.value,
            _CHECKPOINT.value,
            _SPLIT.value,
            _OUT_DIR.value,
            _EVAL_BATCH.value or None,
            calibrate_on=_CALIBRATE_ON.value or None,
            num_bins=_NUM_BINS.value,
            bootstrap_resamples=_RESAMPLES.value,
            bootstrap_seed=_SEED.value,
            confidence=_CONFIDENCE.value,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    scores = ", ".join(
        f"{key} {result[key]:.4f}"
        for key in ("bacc", "macro_f1", "mcc", "auc", "tail_recall")
        if result.get(key) is not None
    )
    print(
        f"{result['split']} split, checkpoint step {result['checkpoint_step']}, {result['num_examples']} "
        f"examples: {scores}"
    )
    calib = result["calibration"]
    line = (
        f"calibration: ECE {calib['ece']:.4f} (equal-mass {calib['ece_mass']:.4f}), Brier {calib['brier']:.4f}, "
        f"NLL {calib['nll']:.4f}"
    )
    scaling = calib.get("temperature_scaling")
    if scaling:
        after = scaling["after"]
        line += (
            f"; T = {scaling['temperature']:.4g} (fitted on {scaling['fitted_on']}): ECE {after['ece']:.4f}, "
            f"NLL {after['nll']:.4f}"
        )
    print(line)
    if "bootstrap" in result:
        boot = result["bootstrap"]
        print(
            "bootstrap {:g} % CI ({} replicates): bacc [{:.4f}, {:.4f}], macro_f1 [{:.4f}, {:.4f}]".format(
                100 * boot["confidence"],
                boot["n_resamples"],
                boot["bacc"]["low"],
                boot["bacc"]["high"],
                boot["macro_f1"]["low"],
                boot["macro_f1"]["high"],
            )
        )
    for path in result["files"].values():
        print(path)


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/evaluate.py`."""
    flags.mark_flags_as_required(["workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
