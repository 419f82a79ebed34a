"""Figures for runs: training curves, confusion matrix, per-class recall along the long tail.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas, never pyplot, so
nothing needs a display and the global backend of a notebook importing this module is left alone.
Each function writes one PNG and returns its path.
"""

import math
import os
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from foprokd_jax.metric_writer import read_metrics_jsonl

# Keys that measure classification quality; "bacc" is drawn boldest since it selects models
# (docs/reference_semantics.md §9).
_QUALITY_SUFFIXES = ("bacc", "macro_f1", "mcc", "accuracy", "head_recall", "medium_recall", "tail_recall")
_GROUP_COLORS = {"head": "#4c72b0", "medium": "#dd8452", "tail": "#c44e52"}


def _save(figure: Figure, out_png: str) -> str:
    directory = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(directory, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out_png, dpi=150, bbox_inches="tight")
    return out_png


def _series(records: Sequence[dict], key: str):
    """(steps, values) for `key`, sorted by step; a step logged twice (resumed run) keeps its last value."""
    by_step = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in record:
            by_step[record["step"]] = float(value)
    steps = sorted(by_step)
    values = np.array([by_step[s] for s in steps], np.float64)
    return np.array(steps), values


def _empty_panel(axis, message: str) -> None:
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes, color="gray")
    axis.set_xticks([])
    axis.set_yticks([])


def plot_training_curves(metrics_jsonl_path: str, out_png: str) -> str:
    """Loss terms (left) and validation quality metrics (right) against step, from metrics.jsonl.

    Loss panel: every key containing "loss". Quality panel: keys ending in bacc/macro_f1/mcc/accuracy or
    head/medium/tail recall whose name does not start with "train" (val/test), bacc drawn thickest.
    A panel with no such keys says so instead of failing; NaN/Inf points are left out of the lines.
    """
    records = read_metrics_jsonl(metrics_jsonl_path)
    keys = sorted({key for record in records for key in record if key != "step"})
    loss_keys = [key for key in keys if "loss" in key]
    quality_keys = [key for key in keys if key.split("/")[-1] in _QUALITY_SUFFIXES and not key.startswith("train")]

    figure = Figure(figsize=(11, 4.2))
    loss_axis, quality_axis = figure.subplots(1, 2)

    positive_losses = True
    for key in loss_keys:
        steps, values = _series(records, key)
        finite = np.isfinite(values)
        if finite.any():
            loss_axis.plot(steps[finite], values[finite], label=key, linewidth=1.2)
            positive_losses &= bool(np.all(values[finite] > 0))
    if loss_axis.lines:
        # Loss terms differ by orders of magnitude (CE vs. a KD term), so a log axis keeps all readable.
        if positive_losses:
            loss_axis.set_yscale("log")
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("loss")
        loss_axis.set_title("Training losses")
        loss_axis.grid(True, alpha=0.3)
        loss_axis.legend(fontsize=7, loc="best")
    else:
        _empty_panel(loss_axis, "no loss logged")

    for key in quality_keys:
        steps, values = _series(records, key)
        finite = np.isfinite(values)
        if finite.any():
            is_bacc = key.endswith("bacc")
            quality_axis.plot(
                steps[finite],
                values[finite],
                label=key,
                marker="o",
                markersize=3,
                linewidth=2.2 if is_bacc else 1.0,
                alpha=1.0 if is_bacc else 0.75,
            )
    if quality_axis.lines:
        quality_axis.set_xlabel("step")
        quality_axis.set_ylabel("score")
        quality_axis.set_title("Evaluation")
        quality_axis.grid(True, alpha=0.3)
        quality_axis.legend(fontsize=7, loc="best")
    else:
        _empty_panel(quality_axis, "no evaluation metrics logged")

    figure.tight_layout()
    return _save(figure, out_png)


def plot_confusion_matrix(
    confusion, class_names: Sequence[str], out_png: str, normalize: bool = True, title: Optional[str] = None
) -> str:
    """Confusion matrix, rows = true class, columns = predicted class.

    With `normalize` the colour and the large number are the row-normalised fraction (the diagonal is
    each class's recall) and the raw count is printed beneath; rows with no examples are left blank.
    """
    counts = np.asarray(confusion, np.float64)
    num_classes = counts.shape[0]
    if counts.shape != (num_classes, num_classes) or len(class_names) != num_classes:
        raise ValueError(f"confusion {counts.shape} does not match {len(class_names)} class names")
    row_totals = counts.sum(axis=1, keepdims=True)
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(row_totals > 0, counts / np.where(row_totals > 0, row_totals, 1), np.nan)
        vmax = 1.0
    else:
        shown = counts
        vmax = max(counts.max(), 1.0)

    size = 1.0 + 0.75 * num_classes
    figure = Figure(figsize=(size + 1.2, size))
    axis = figure.subplots()
    image = axis.imshow(np.ma.masked_invalid(shown), cmap="Blues", vmin=0.0, vmax=vmax)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class (recall)" if normalize else "count")

    for true_index in range(num_classes):
        for pred_index in range(num_classes):
            value = shown[true_index, pred_index]
            count = int(counts[true_index, pred_index])
            if math.isnan(value) or (count == 0 and true_index != pred_index):
                continue  # empty off-diagonal cells stay blank so the errors that exist stand out
            dark = value > 0.6 * vmax
            text = f"{value:.2f}\n({count})" if normalize else f"{count}"
            axis.text(
                pred_index, true_index, text, ha="center", va="center", fontsize=7, color="white" if dark else "black"
            )

    axis.set_xticks(range(num_classes))
    axis.set_yticks(range(num_classes))
    axis.set_xticklabels(class_names, rotation=45, ha="right")
    axis.set_yticklabels(class_names)
    axis.set_xlabel("Predicted class")
    axis.set_ylabel("True class")
    if title is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls = np.diag(counts)[row_totals[:, 0] > 0] / row_totals[row_totals[:, 0] > 0, 0]
        title = f"Confusion matrix (balanced accuracy {recalls.mean():.3f})" if recalls.size else "Confusion matrix"
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, out_png)


def plot_per_class_recall(
    per_class_recall: dict,
    train_counts,
    out_png: str,
    head_min: int = 700,
    tail_max: int = 70,
    title: str = "Per-class recall along the long tail",
    recall_intervals: Optional[dict] = None,
    interval_label: str = "95 % bootstrap CI",
) -> str:
    """Recall bars from head to tail (sorted by train count), train counts on a log secondary axis.

    `train_counts` is a dict by class name or a sequence in the order of `per_class_recall`. Bars are
    coloured head/medium/tail (train count > head_min / between / < tail_max, as in
    `metrics.classification_report`); a class whose recall is None (no eval examples) gets "n/a".
    `recall_intervals` ({name: {"low", "high"} or None}, e.g. `statistics.bootstrap_intervals(...)
    ["per_class_recall"]`) draws each bar's confidence interval as an error bar.
    """
    names = list(per_class_recall)
    if isinstance(train_counts, dict):
        counts = np.array([train_counts[name] for name in names], np.float64)
    else:
        counts = np.asarray(train_counts, np.float64).reshape(-1)
        if counts.shape[0] != len(names):
            raise ValueError(f"{counts.shape[0]} train counts for {len(names)} classes")
    order = np.argsort(-counts, kind="stable")
    names = [names[i] for i in order]
    counts = counts[order]
    recalls = [per_class_recall[name] for name in names]
    groups = ["head" if c > head_min else "tail" if c < tail_max else "medium" for c in counts]

    figure = Figure(figsize=(max(6.0, 0.8 * len(names) + 2.0), 4.2))
    axis = figure.subplots()
    positions = np.arange(len(names))
    heights = [r if r is not None else 0.0 for r in recalls]
    bars = axis.bar(positions, heights, color=[_GROUP_COLORS[g] for g in groups], width=0.65, zorder=2)
    if recall_intervals:
        # Asymmetric bars from the interval's ends; classes without an interval get none.
        intervals = [recall_intervals.get(name) for name in names]
        lower = [h - ci["low"] if ci else 0.0 for h, ci in zip(heights, intervals)]
        upper = [ci["high"] - h if ci else 0.0 for h, ci in zip(heights, intervals)]
        axis.errorbar(
            positions,
            heights,
            yerr=[np.maximum(lower, 0), np.maximum(upper, 0)],
            fmt="none",
            ecolor="0.15",
            elinewidth=1.0,
            capsize=3,
            zorder=3,
        )
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("recall (eval)")
    axis.set_xticks(positions)
    # The exact train count under each name, since the log axis only gives its order of magnitude.
    axis.set_xticklabels([f"{name}\nn={int(count)}" for name, count in zip(names, counts)], fontsize=8)
    axis.set_xlabel("class, most to least frequent in training")
    axis.grid(True, axis="y", alpha=0.3, zorder=0)

    count_axis = axis.twinx()
    count_axis.plot(
        positions, counts, color="0.25", marker="D", markersize=4, linewidth=1.0, linestyle="--", label="train count"
    )
    if np.all(counts > 0):
        count_axis.set_yscale("log")
    count_axis.set_ylabel("training images (log scale)")

    # Recall labels go on the twin axis (in the bar axis' coordinates) so they sit above the count
    # line, which the twin axis would otherwise draw over them.
    for bar, recall, name in zip(bars, recalls, names):
        center = bar.get_x() + bar.get_width() / 2
        text, height = ("n/a", 0.15) if recall is None else (f"{recall:.2f}", recall + 0.015)
        interval = (recall_intervals or {}).get(name) if recall is not None else None
        if interval:
            height = max(height, interval["high"] + 0.015)  # above the error bar
        count_axis.text(
            center,
            height,
            text,
            transform=axis.transData,
            ha="center",
            va="bottom",
            fontsize=8,
            color="gray" if recall is None else "black",
            zorder=5,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85),
        )

    # One legend for both axes: the group colours and the count line.
    from matplotlib.patches import Patch

    group_labels = {
        "head": f"head (>{head_min})",
        "medium": f"medium ({tail_max}-{head_min})",
        "tail": f"tail (<{tail_max})",
    }
    handles = [Patch(color=_GROUP_COLORS[g], label=group_labels[g]) for g in ("head", "medium", "tail") if g in groups]
    handles += count_axis.get_lines()[:1]
    # Below the axes: inside, it would hide the bars whenever tail recall is high.
    axis.legend(
        handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(handles), frameon=False
    )
    axis.set_title(f"{title} (error bars: {interval_label})" if recall_intervals else title, fontsize=10)
    figure.tight_layout()
    return _save(figure, out_png)


def plot_reliability_diagram(
    bins: dict,
    out_png: str,
    title: Optional[str] = None,
    after: Optional[dict] = None,
    after_label: str = "after temperature scaling",
) -> str:
    """Reliability diagram of `calibration.reliability_bins` output: accuracy vs confidence per bin.

    Top: one bar per non-empty bin at its mean confidence (width = the bin's width), height = the bin's
    accuracy, the gap to the diagonal shaded; `after` (bins of the temperature-scaled model) is drawn as a
    line. Bottom: the share of examples per bin. ECE in the legend.
    """
    edges = np.asarray(bins["edges"], np.float64)
    counts = np.asarray(bins["count"], np.float64)
    figure = Figure(figsize=(5.2, 6.0))
    axis, hist_axis = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    axis.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1.0, label="perfect calibration")
    nonempty = [i for i, n in enumerate(counts) if n > 0]
    lefts, widths = edges[:-1], np.diff(edges)
    accuracy = [bins["accuracy"][i] for i in nonempty]
    confidence = [bins["confidence"][i] for i in nonempty]
    axis.bar(
        [lefts[i] for i in nonempty],
        accuracy,
        width=[widths[i] for i in nonempty],
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        linewidth=0.6,
        alpha=0.85,
        zorder=2,
        label=f"accuracy ({bins['binning']} bins), ECE {100 * bins['ece']:.2f} %",
    )
    axis.bar(
        [lefts[i] for i in nonempty],
        np.subtract(confidence, accuracy),
        bottom=accuracy,
        width=[widths[i] for i in nonempty],
        align="edge",
        color="#c44e52",
        alpha=0.35,
        zorder=2,
        hatch="//",
        edgecolor="#c44e52",
        linewidth=0.0,
        label="gap to mean confidence",
    )
    if after is not None:
        kept = [i for i, n in enumerate(after["count"]) if n > 0]
        axis.plot(
            [after["confidence"][i] for i in kept],
            [after["accuracy"][i] for i in kept],
            marker="o",
            markersize=4,
            color="#dd8452",
            linewidth=1.4,
            zorder=3,
            label=f"{after_label}, ECE {100 * after['ece']:.2f} %",
        )
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.grid(True, alpha=0.3, zorder=0)
    axis.legend(fontsize=7, loc="upper left")
    axis.set_title(title or "Reliability diagram (top-label confidence)", fontsize=10)
    total = max(counts.sum(), 1.0)
    hist_axis.bar(lefts, counts / total, width=widths, align="edge", color="0.5", edgecolor="white", linewidth=0.6)
    hist_axis.set_xlabel("confidence (max probability)")
    hist_axis.set_ylabel("share")
    hist_axis.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, out_png)


def plot_method_comparison(
    scores_by_method: dict, out_png: str, title: str = "Methods compared (best checkpoint)"
) -> str:
    """Grouped bars: one group per metric (e.g. bacc, macro_f1, tail_recall), one bar per method.

    `scores_by_method` is `{method: {metric: value}}`; None/NaN values (e.g. a group that a split does
    not have) leave a gap, and a metric missing for every method is dropped.
    """
    methods = list(scores_by_method)
    metric_names = []
    for scores in scores_by_method.values():
        metric_names += [name for name in scores if name not in metric_names]

    def value(method, name):
        v = scores_by_method[method].get(name)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    metric_names = [n for n in metric_names if any(value(m, n) is not None for m in methods)]
    figure = Figure(figsize=(max(6.0, 1.2 * len(metric_names) * max(len(methods), 1) ** 0.5 + 2.0), 4.0))
    axis = figure.subplots()
    if not metric_names or not methods:
        _empty_panel(axis, "no scores to compare")
        return _save(figure, out_png)
    width = 0.8 / len(methods)
    positions = np.arange(len(metric_names))
    for index, method in enumerate(methods):
        offsets = positions - 0.4 + width * (index + 0.5)
        heights = [value(method, n) for n in metric_names]
        bars = axis.bar(offsets, [h if h is not None else 0.0 for h in heights], width, label=method, zorder=2)
        for bar, height in zip(bars, heights):
            if height is not None:
                axis.text(
                    bar.get_x() + bar.get_width() / 2,
                    max(height, 0.0) + 0.01,
                    f"{height:.2f}",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
    axis.set_xticks(positions)
    axis.set_xticklabels(metric_names, rotation=20, ha="right")
    lowest = min(value(m, n) for m in methods for n in metric_names if value(m, n) is not None)
    axis.set_ylim(min(0.0, lowest - 0.05), 1.08)  # MCC can be negative
    axis.set_ylabel("score")
    axis.grid(True, axis="y", alpha=0.3, zorder=0)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(methods), 5), frameon=False)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, out_png)


def plot_metric_vs_imbalance(
    series: dict, out_png: str, metric_label: str = "tail-class recall", title: Optional[str] = None
) -> str:
    """One line per method: a metric's mean ± std (error bars) against the imbalance ratio 1 / imb.

    `series` is `{method label: [(imb, mean, std, n), ...]}` with `imb` the imbalance factor (0.01 ->
    ratio 100); `mean` None marks a missing cell (no run, or the metric undefined, e.g. no tail class at
    that factor) and leaves a gap; `std` None (a single run) draws no bar. The x axis is logarithmic with
    the ratios as tick labels, most balanced on the left.
    """
    figure = Figure(figsize=(6.4, 4.2))
    axis = figure.subplots()
    ratios = sorted({1.0 / float(point[0]) for points in series.values() for point in points})
    for label, points in series.items():
        points = sorted(points, key=lambda p: 1.0 / float(p[0]))
        x = np.array([1.0 / float(p[0]) for p in points])
        y = np.array([np.nan if p[1] is None else float(p[1]) for p in points])
        err = np.array([0.0 if p[2] is None or p[1] is None else float(p[2]) for p in points])
        if not np.isfinite(y).any():
            continue
        line = axis.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, linewidth=1.4, label=label)
        for xi, yi, p in zip(x, y, points):
            if np.isfinite(yi):
                axis.annotate(
                    f"n={p[3]}",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=6,
                    color=line[0].get_color(),
                )
    if not axis.lines:
        _empty_panel(axis, f"no {metric_label} to plot")
        return _save(figure, out_png)
    axis.set_xscale("log")
    axis.set_xticks(ratios)
    axis.set_xticklabels([f"{r:g}" for r in ratios])
    axis.minorticks_off()
    axis.set_xlabel("imbalance ratio (largest / smallest class)")
    axis.set_ylabel(metric_label)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    axis.set_title(title or f"{metric_label} vs imbalance (mean ± std)", fontsize=10)
    figure.tight_layout()
    return _save(figure, out_png)


def plot_image_panels(panels: Sequence[tuple], out_png: str, title: Optional[str] = None) -> str:
    """One row of images side by side: `panels` is [(subtitle, uint8 HWC image), ...] (e.g. an input image and
    its Grad-CAM / Grad-CAM++ overlays from explain.overlay)."""
    figure = Figure(figsize=(2.6 * len(panels), 2.9))
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for axis, (subtitle, image) in zip(axes, panels):
        axis.imshow(image)
        axis.set_title(subtitle, fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, out_png)
