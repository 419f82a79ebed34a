"""Evaluating a trained run after the fact: whole-split logits, the full report, figures, per-image CSV.

`predict_split` runs any method's `predict_step` (methods.MethodParts) over one split in source order,
multi-process aware. `restore_run` rebuilds a run from its workdir alone: config.json -> the dataset
(data.registry) and the method (methods.build_method), then the chosen checkpoint through
checkpointing.Checkpointer. `evaluate_run` is what launch/evaluate.py does. Metrics: metrics.full_report
(docs/reference_semantics.md §9, docs/crckd.md §R9); calibration (calibration.py: ECE, Brier, NLL, temperature
scaling fitted on another split) and stratified bootstrap intervals (statistics.py) by `uncertainty_report`.
Docs: docs/evaluation.md.
"""

import csv
import dataclasses
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from foprokd_jax import calibration, checkpointing, methods, metrics, parallel, plots, statistics
from foprokd_jax.data import pipeline, registry


def predict_split(predict_step, state, source, eval_batch_size: int, mesh):
    """(logits (N, C) float32, labels (N,) int64) of the evaluated model over a whole split, in source order.

    Each process feeds its rows of `pipeline.make_eval_batches`; the global logits, labels and masks are
    gathered onto every process with `process_allgather` (which accepts both the replicated and the
    data-sharded outputs a `predict_step` may return), and padding rows (mask False) are dropped.
    """
    parallel.check_global_batch(eval_batch_size, mesh, "config.input.eval_batch_size")
    logits, labels = [], []
    for batch in pipeline.make_eval_batches(source, eval_batch_size, jax.process_index(), jax.process_count()):
        global_batch = parallel.host_batch_to_global(batch, mesh)
        out = predict_step(state, global_batch)
        gathered = multihost_utils.process_allgather(
            {"logits": out, "label": global_batch["label"], "mask": global_batch["mask"]}, tiled=True
        )
        keep = np.asarray(gathered["mask"]).astype(bool)
        logits.append(np.asarray(gathered["logits"], np.float32)[keep])
        labels.append(np.asarray(gathered["label"], np.int64)[keep])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    if len(labels) != len(source):
        raise RuntimeError(f"evaluated {len(labels)} examples for a split of {len(source)}")
    return logits, labels


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The locked config a run was trained with, from workdir/config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be the folder of a run made by launch/train.py")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    config = ml_collections.ConfigDict(data)
    config.lock()
    return config


def resolve_checkpoint(ckpt: checkpointing.Checkpointer, which: str) -> int:
    """'best' (by selection balanced accuracy), 'latest', or a step number that has a checkpoint."""
    steps = sorted(ckpt.all_steps())
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    if which == "best":
        step = ckpt.best_step()
        if step is None:
            raise ValueError(
                f"{ckpt.directory} has no checkpoint ranked by a selection metric; use "
                f"--checkpoint=latest or one of {steps}"
            )
        return step
    if which == "latest":
        return ckpt.latest_step()
    try:
        step = int(which)
    except ValueError:
        raise ValueError(f"--checkpoint={which!r} is not 'best', 'latest' or a step number") from None
    if step not in steps:
        raise ValueError(f"no checkpoint of step {step} in {ckpt.directory}; kept steps: {steps}")
    return step


@dataclasses.dataclass
class RestoredRun:
    """A trained run rebuilt from its workdir: what evaluation and prediction need."""

    workdir: str
    config: Any
    dataset: registry.LoadedDataset
    parts: methods.MethodParts
    state: Any
    step: int
    mesh: Any


def restore_run(workdir: str, checkpoint: str = "best") -> RestoredRun:
    """Rebuilds the run's dataset and method from config.json and restores the chosen checkpoint."""
    config = load_config(workdir)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"{workdir}/checkpoints not found: the run saved no checkpoint yet")
    mesh = parallel.make_mesh(None if config.num_devices <= 0 else config.num_devices)
    dataset = registry.load_dataset(config.input)
    steps_per_epoch = pipeline.steps_per_epoch(len(dataset.sources["train"]), config.input.batch_size)
    parts = methods.build_method(config, mesh, dataset, steps_per_epoch)
    if checkpoint == "best" and config.eval.protocol == "test_last":
        # Under 'test_last' the run selected nothing (its "best" would be chosen on the test split): the
        # model it reported is the last one, so that is what 'best' means here.
        logging.info("%s ran eval.protocol='test_last': using its last checkpoint, the one it reported", workdir)
        checkpoint = "latest"
    with checkpointing.Checkpointer(workdir) as ckpt:
        step = resolve_checkpoint(ckpt, checkpoint)
        state = ckpt.restore(step, parts.state)
    return RestoredRun(workdir=workdir, config=config, dataset=dataset, parts=parts, state=state, step=step, mesh=mesh)


def split_metrics(predict_step, state, source, dataset, config, mesh) -> dict:
    """`metrics.full_report` (balanced accuracy, AUC, kappa, ...) of a model on one split (the training loop's)."""
    logits, labels = predict_split(predict_step, state, source, config.input.eval_batch_size, mesh)
    return report_from_logits(logits, labels, dataset, config)


def restored_split_report(run: RestoredRun, split: str, eval_batch_size: Optional[int] = None):
    """(full_report, logits, labels) of a restored run's model on one split of its dataset."""
    if split not in run.dataset.sources:
        raise ValueError(f"split {split!r} is not in {run.dataset.name} (has {sorted(run.dataset.sources)})")
    batch_size = eval_batch_size or run.config.input.eval_batch_size
    logits, labels = predict_split(run.parts.predict_step, run.state, run.dataset.sources[split], batch_size, run.mesh)
    return report_from_logits(logits, labels, run.dataset, run.config), logits, labels


def report_from_logits(logits, labels, dataset, config) -> dict:
    """`metrics.full_report` of raw logits (softmax probabilities for AUC, argmax predictions)."""
    return metrics.full_report(
        metrics.softmax(logits),
        labels,
        dataset.class_names,
        dataset.train_counts,
        config.eval.head_min,
        config.eval.tail_max,
        predictions=np.argmax(logits, axis=1),
    )


def uncertainty_report(
    logits,
    labels,
    class_names,
    fit_logits=None,
    fit_labels=None,
    fit_split=None,
    num_bins: int = calibration.DEFAULT_NUM_BINS,
    bootstrap_resamples: int = statistics.DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    confidence: float = statistics.DEFAULT_CONFIDENCE,
) -> dict:
    """{"calibration": calibration.calibration_report, "bootstrap": statistics.bootstrap_intervals} of one split.

    `fit_logits`/`fit_labels` (another split, e.g. val) fit the temperature whose effect is reported on
    `logits`; without them there is no "temperature_scaling" block. `bootstrap_resamples=0` leaves the
    bootstrap out. Predictions are the argmax of the logits, as in `report_from_logits`.
    """
    out = {"calibration": calibration.calibration_report(logits, labels, num_bins, fit_logits, fit_labels, fit_split)}
    if bootstrap_resamples:
        out["bootstrap"] = statistics.bootstrap_intervals(
            labels, np.argmax(logits, axis=1), class_names, bootstrap_resamples, bootstrap_seed, confidence
        )
    return out


def write_predictions_csv(path: str, ids, labels, probs, class_names, write_labels: bool = True) -> str:
    """One line per image: id, [label, label name,] prediction, prediction name, p_<class>..."""
    probs = np.asarray(probs)
    predictions = np.argmax(probs, axis=1)
    header = ["image_id"] + (["label", "label_name"] if write_labels else []) + ["prediction", "prediction_name"]
    header += [f"p_{name}" for name in class_names]
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, image_id in enumerate(ids):
            row = [str(image_id)]
            if write_labels:
                row += [int(labels[i]), class_names[int(labels[i])]]
            row += [int(predictions[i]), class_names[int(predictions[i])]] + [f"{p:.6g}" for p in probs[i]]
            writer.writerow(row)
    os.replace(path + ".tmp", path)
    return path


def evaluate_run(
    workdir: str,
    checkpoint: str = "best",
    split: str = "test",
    out_dir: Optional[str] = None,
    eval_batch_size: Optional[int] = None,
    **uncertainty,
) -> dict:
    """launch/evaluate.py: `restore_run` then `write_evaluation` (keyword arguments: its calibration/bootstrap ones)."""
    return write_evaluation(restore_run(workdir, checkpoint), split, out_dir, eval_batch_size, **uncertainty)


def write_evaluation(
    run: RestoredRun,
    split: str = "test",
    out_dir: Optional[str] = None,
    eval_batch_size: Optional[int] = None,
    calibrate_on: Optional[str] = "val",
    num_bins: int = calibration.DEFAULT_NUM_BINS,
    bootstrap_resamples: int = statistics.DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    confidence: float = statistics.DEFAULT_CONFIDENCE,
) -> dict:
    """metrics.json, confusion_matrix.png, per_class_recall.png, reliability_diagram.png, predictions.csv.

    Written by process 0 into `out_dir` (default <workdir>/eval/<split>_step<step>). Returns the metrics dict
    (full_report plus workdir, split, checkpoint_step, files, and `uncertainty_report`'s "calibration" and
    "bootstrap"). The temperature is fitted on `calibrate_on` (default 'val'; None or '' for none); it is
    skipped, with the reason in calibration["temperature_scaling_skipped"], when that split is the evaluated
    one (an in-sample fit) or the dataset has no such split (APTOS has no val).
    """
    workdir = run.workdir
    report, logits, labels = restored_split_report(run, split, eval_batch_size)
    out_dir = out_dir or os.path.join(workdir, "eval", f"{split}_step{run.step}")
    names = list(run.dataset.class_names)
    skipped = None
    if not calibrate_on:
        skipped = "no split given for temperature scaling"
    elif calibrate_on == split:
        skipped = f"the temperature would be fitted on the evaluated split {split!r} itself"
    elif calibrate_on not in run.dataset.sources:
        skipped = f"{run.dataset.name} has no {calibrate_on!r} split"
    fit_logits = fit_labels = None
    if skipped is None:
        fit_logits, fit_labels = predict_split(
            run.parts.predict_step,
            run.state,
            run.dataset.sources[calibrate_on],
            eval_batch_size or run.config.input.eval_batch_size,
            run.mesh,
        )
    uncertainty = uncertainty_report(
        logits,
        labels,
        names,
        fit_logits,
        fit_labels,
        calibrate_on if skipped is None else None,
        num_bins,
        bootstrap_resamples,
        bootstrap_seed,
        confidence,
    )
    if skipped is not None:
        uncertainty["calibration"]["temperature_scaling_skipped"] = skipped
    files = {
        name: os.path.join(out_dir, name)
        for name in (
            "metrics.json",
            "confusion_matrix.png",
            "per_class_recall.png",
            "reliability_diagram.png",
            "predictions.csv",
        )
    }
    result = {
        "workdir": os.path.abspath(workdir),
        "split": split,
        "checkpoint_step": run.step,
        "dataset": run.dataset.name,
        "method": run.config.method,
        "class_names": names,
        **report,
        **uncertainty,
        "files": files,
    }
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        ids = run.dataset.ids.get(split)
        if ids is None or len(ids) != len(labels):
            ids = np.arange(len(labels))  # a dataset without ids: the row index in the split
        write_predictions_csv(files["predictions.csv"], ids, labels, metrics.softmax(logits), names)
        plots.plot_confusion_matrix(
            np.asarray(report["confusion"]),
            names,
            files["confusion_matrix.png"],
            title=f"{split}, step {run.step}: balanced accuracy {report['bacc']:.3f}",
        )
        intervals = uncertainty.get("bootstrap")
        plots.plot_per_class_recall(
            report["per_class_recall"],
            run.dataset.train_counts,
            files["per_class_recall.png"],
            run.config.eval.head_min,
            run.config.eval.tail_max,
            recall_intervals=intervals["per_class_recall"] if intervals else None,
            interval_label=f"{100 * confidence:g} % stratified bootstrap CI",
        )
        calib = uncertainty["calibration"]
        scaling = calib.get("temperature_scaling")
        plots.plot_reliability_diagram(
            calib["bins"]["width"],
            files["reliability_diagram.png"],
            title=f"{split}, step {run.step}: reliability ({num_bins} equal-width bins)",
            after=scaling["after"]["bins"]["width"] if scaling else None,
            after_label=f"T = {scaling['temperature']:.3g} fitted on {calibrate_on}" if scaling else "",
        )
        with open(files["metrics.json"] + ".tmp", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, allow_nan=False)
        os.replace(files["metrics.json"] + ".tmp", files["metrics.json"])
    return result
