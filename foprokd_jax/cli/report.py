"""Paper-style tables from finished runs: mean ± std over folds/seeds as Markdown and CSV, plus a plot.

    python launch/report.py --sweep_dir=workdirs/sweep_isic                 # every run of a sweep
    python launch/report.py --runs='workdirs/isic_*' --runs='old/*/results.json' --out_dir=reports/isic
    python launch/report.py --sweep_dir=workdirs/crckd --source=last_evals_mean --metrics=auc,accuracy,\
macro_precision,bacc,macro_f1,kappa_quadratic                               # CRCKD's columns (docs/crckd.md §R9)

Each run is a folder holding `results.json` (written by launch/train.py). Runs are grouped per dataset into
one table: rows = method (+ teacher, or any `--rows` fields), columns = imbalance factor (one group per
factor; datasets without one get a single group), each group showing `n` (runs in the cell) and the
metrics, balanced accuracy first. A cell is `mean ± std` over its runs (folds/seeds; sample std, ddof=1 by
default), `[k/n]` when only k of the n runs define that metric (e.g. no tail class at imb 0.01), and `—`
when nothing is there. Scores are shown ×100. Outputs in --out_dir (default <sweep_dir>/report or
./report): report.md, report.csv (the same layout, unscaled numbers), runs.csv (one line per run) and
<plot_metric>_vs_imbalance_<dataset>.png (mean ± std per method against the imbalance ratio) and report.tex
(the same tables in LaTeX, booktabs).

    python launch/report.py --sweep_dir=workdirs/sweep_isic --baseline=bsm   # + paired tests against bsm

With --baseline (a row label, e.g. 'bsm' or 'ekd (moco_r50)'), every other row is compared with it over the
runs matched by (fold, seed) within each dataset and imbalance factor: mean ± std of the paired differences,
the paired t-test and the exact Wilcoxon signed-rank test (foprokd_jax/statistics.py), with their p-values,
added to report.md and report.tex and written to paired.csv. Docs: docs/evaluation.md.
"""

import csv
import glob
import json
import math
import os
import sys

import numpy as np

from foprokd_jax import plots, statistics

DEFAULT_DATASET = "isic2019_lt"  # results.json files written before the dataset registry lack 'dataset'
DEFAULT_METRICS = ("bacc", "macro_f1", "tail_recall", "medium_recall", "head_recall", "mcc")
SOURCES = ("report", "selection", "last_evals_mean")
METRIC_LABELS = {
    "bacc": "BAcc",
    "macro_f1": "F1",
    "tail_recall": "Tail",
    "medium_recall": "Med.",
    "head_recall": "Head",
    "mcc": "MCC",
    "accuracy": "Acc",
    "auc": "AUC",
    "macro_precision": "Prec",
    "macro_recall": "Rec",
    "macro_specificity": "Spec",
    "kappa": "κ",
    "kappa_quadratic": "κ (quad.)",
    "calibration/ece": "ECE",
    "calibration/ece_mass": "ECE (mass)",
    "calibration/brier": "Brier",
    "calibration/nll": "NLL",
    "calibration/temperature_scaling/after/ece": "ECE (T)",
    "calibration/temperature_scaling/after/nll": "NLL (T)",
}
# Rows are listed baseline first, then in the order the methods build on each other.
METHOD_ORDER = ("bsm", "ekd", "fopro", "crckd")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _imb_key(imb):
    """The imbalance factor as the split files spell it ('0.01'), or None."""
    if imb is None or imb == "":
        return None
    return imb if isinstance(imb, str) else f"{float(imb):g}"


def load_run(path: str) -> dict:
    """One run, from its folder or its results.json, with older results.json shapes filled in.

    Returns {run_dir, results_path, dataset, method, teacher, fold, imb, seed, best_step, results, config}.
    Older files lack `dataset` (-> 'isic2019_lt'), `seed` (-> config.json's) and store the teacher's
    artifact record instead of its name (-> config.json's teacher.name, else the record's arch).
    """
    results_path = path if path.endswith(".json") else os.path.join(path, "results.json")
    run_dir = os.path.dirname(os.path.abspath(results_path))
    results = _read_json(results_path)
    if "method" not in results:
        raise ValueError(f"{results_path} has no 'method' field")
    config_path = os.path.join(run_dir, "config.json")
    config = _read_json(config_path) if os.path.exists(config_path) else {}
    teacher = results.get("teacher")
    if isinstance(teacher, dict):
        teacher = (config.get("teacher") or {}).get("name") or teacher.get("arch")
    return {
        "run_dir": run_dir,
        "results_path": results_path,
        "results": results,
        "config": config,
        "dataset": results.get("dataset") or DEFAULT_DATASET,
        "method": results["method"],
        "teacher": teacher,
        "fold": results.get("fold"),
        "imb": _imb_key(results.get("imb")),
        "seed": results.get("seed", config.get("seed")),
        "best_step": results.get("best_step"),
    }


def collect_runs(patterns=(), sweep_dir=None):
    """(runs, missing): runs with a results.json, and folders that have none yet (unfinished/failed).

    `patterns` are globs matching run folders or results.json files; `sweep_dir` adds the runs listed in
    its sweep.json (or, without one, its sub-folders).
    """
    candidates, missing = [], []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"--runs pattern {pattern!r} matches nothing")
        candidates += matches
    if sweep_dir:
        sweep_json = os.path.join(sweep_dir, "sweep.json")
        if os.path.exists(sweep_json):
            candidates += [run["workdir"] for run in _read_json(sweep_json).get("runs", [])]
        elif os.path.isdir(sweep_dir):
            candidates += sorted(p for p in glob.glob(os.path.join(sweep_dir, "*")) if os.path.isdir(p))
        else:
            raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    runs, seen = [], set()
    for path in candidates:
        results_path = path if path.endswith(".json") else os.path.join(path, "results.json")
        key = os.path.realpath(results_path)
        if key in seen:
            continue
        seen.add(key)
        if os.path.exists(results_path):
            runs.append(load_run(results_path))
        elif os.path.isdir(path):
            missing.append(os.path.abspath(path))
    return runs, missing


def _field(run: dict, name: str):
    """A run's value for a row field: a top-level fact ('method', 'teacher', ...) or 'config.a.b'."""
    if name.startswith("config."):
        value = run["config"]
        for part in name.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        return value
    return run.get(name, run["results"].get(name))


def row_label(run: dict, fields) -> str:
    """'ekd (moco_r50)': the first field, then the others that are set, in parentheses."""
    values = [_field(run, name) for name in fields]
    extra = [str(v) for v in values[1:] if v not in (None, "")]
    return str(values[0]) + (f" ({', '.join(extra)})" if extra else "")


def metric_value(run: dict, source: str, metric: str):
    """A finite float or None; 'recall/<class>' reads a per-class recall, any other 'a/b/...' a nested value of
    the block (e.g. 'calibration/ece', 'calibration/temperature_scaling/after/ece', 'bootstrap/bacc/low')."""
    report = run["results"].get(source) or {}
    value = report.get(metric)
    if value is None and metric.startswith("recall/"):
        value = (report.get("per_class_recall") or {}).get(metric.split("/", 1)[1])
    elif value is None and "/" in metric:
        value = report
        for part in metric.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _summary(values, ddof: int) -> dict:
    if not values:
        return {"mean": None, "std": None, "count": 0, "values": []}
    std = float(np.std(values, ddof=ddof)) if len(values) > ddof else None
    return {"mean": float(np.mean(values)), "std": std, "count": len(values), "values": list(values)}


def aggregate(runs, metrics=DEFAULT_METRICS, source="report", rows=("method", "teacher"), ddof: int = 1) -> dict:
    """{dataset: {"rows": [...], "columns": [imb or None], "cells": {(row, column): cell}}}.

    cell = {"n": runs in the cell, "runs": [run folders], "metrics": {metric: {mean, std, count, values}}}.
    """
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {SOURCES}")
    tables = {}
    for run in runs:
        table = tables.setdefault(run["dataset"], {"cells": {}})
        key = (row_label(run, rows), run["imb"])
        table["cells"].setdefault(key, []).append(run)
    for table in tables.values():
        groups = table["cells"]
        table["rows"] = sorted(
            {r for r, _ in groups},
            key=lambda label: (
                METHOD_ORDER.index(label.split(" ")[0]) if label.split(" ")[0] in METHOD_ORDER else len(METHOD_ORDER),
                label,
            ),
        )
        table["columns"] = sorted({c for _, c in groups}, key=lambda c: (c is not None, -float(c or 0)))
        table["cells"] = {
            key: {
                "n": len(members),
                "runs": [m["run_dir"] for m in members],
                "metrics": {
                    metric: _summary(
                        [v for v in (metric_value(m, source, metric) for m in members) if v is not None], ddof
                    )
                    for metric in metrics
                },
            }
            for key, members in groups.items()
        }
    return tables


def _format_cell(summary: dict, n: int, scale: float, decimals: int) -> str:
    if summary["count"] == 0:
        return "—"
    text = f"{summary['mean'] * scale:.{decimals}f}"
    if summary["std"] is not None:
        text += f" ± {summary['std'] * scale:.{decimals}f}"
    if summary["count"] < n:
        text += f" [{summary['count']}/{n}]"
    return text


def _column_title(column) -> str:
    return "" if column is None else f"imb {column} · "


def markdown(tables: dict, metrics, source: str, scale: float = 100.0, decimals: int = 2, missing=()) -> str:
    lines = [
        f"Scores ×{scale:g} on the `{source}` split/summary: mean ± std over runs (folds/seeds); "
        "`[k/n]`: only k of the n runs define the metric; `—`: no run, or the metric is undefined in all "
        "of them. imb 0.01 = imbalance ratio 100."
    ]
    for dataset, table in sorted(tables.items()):
        header = ["Method"]
        for column in table["columns"]:
            header += [f"{_column_title(column)}n"] + [
                f"{_column_title(column)}{METRIC_LABELS.get(m, m)}" for m in metrics
            ]
        lines += [
            "",
            f"### {dataset}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        for row in table["rows"]:
            cells = [row]
            for column in table["columns"]:
                cell = table["cells"].get((row, column))
                if cell is None:
                    cells += ["0"] + ["—"] * len(metrics)
                    continue
                cells += [str(cell["n"])] + [
                    _format_cell(cell["metrics"][m], cell["n"], scale, decimals) for m in metrics
                ]
            lines.append("| " + " | ".join(cells) + " |")
    if missing:
        lines += ["", f"Runs without results.json (unfinished or failed, left out): {len(missing)}", ""]
        lines += [f"- `{path}`" for path in missing]
    return "\n".join(lines) + "\n"


def write_csv(tables: dict, metrics, path: str) -> None:
    """The table layout with unscaled numbers: one line per (dataset, row); per column group `n`, mean, std.

    Column names: `imb=<factor>/n`, `imb=<factor>/<metric>/mean|std` (`n`, `<metric>/mean|std` for a dataset
    without factors); one header for all datasets, empty where a dataset lacks a group.
    """
    columns = []
    for table in tables.values():
        columns += [c for c in table["columns"] if c not in columns]
    columns.sort(key=lambda c: (c is not None, -float(c or 0)))
    header = ["dataset", "method"]
    for column in columns:
        prefix = "" if column is None else f"imb={column}/"
        header += [f"{prefix}n"] + [f"{prefix}{m}/{stat}" for m in metrics for stat in ("mean", "std")]
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for dataset, table in sorted(tables.items()):
            for row in table["rows"]:
                line = [dataset, row]
                for column in columns:
                    if column not in table["columns"]:
                        line += [""] * (1 + 2 * len(metrics))
                        continue
                    cell = table["cells"].get((row, column))
                    line.append(cell["n"] if cell else 0)
                    for m in metrics:
                        summary = cell["metrics"][m] if cell else {"mean": None, "std": None}
                        line += ["" if summary[s] is None else repr(summary[s]) for s in ("mean", "std")]
                writer.writerow(line)
    os.replace(path + ".tmp", path)


def write_runs_csv(runs, metrics, source: str, path: str) -> None:
    fields = ["dataset", "method", "teacher", "imb", "fold", "seed", "best_step", "run_dir"]
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(fields + list(metrics))
        for run in sorted(
            runs,
            key=lambda r: (r["dataset"], r["method"], str(r["teacher"]), str(r["imb"]), str(r["fold"]), str(r["seed"])),
        ):
            values = [metric_value(run, source, m) for m in metrics]
            writer.writerow([run[k] for k in fields] + ["" if v is None else repr(v) for v in values])
    os.replace(path + ".tmp", path)


def plot_tables(tables: dict, metric: str, out_dir: str) -> list:
    """One PNG per dataset with imbalance factors: `metric` per row against the imbalance ratio."""
    paths = []
    for dataset, table in sorted(tables.items()):
        columns = [c for c in table["columns"] if c is not None]
        if not columns:
            continue
        series = {}
        for row in table["rows"]:
            points = []
            for column in columns:
                cell = table["cells"].get((row, column))
                summary = cell["metrics"].get(metric) if cell else None
                if summary is None:
                    continue  # the metric was not aggregated, or this row has no run at this factor
                points.append((column, summary["mean"], summary["std"], summary["count"]))
            series[row] = points
        path = os.path.join(out_dir, f"{metric.replace('/', '_')}_vs_imbalance_{dataset}.png")
        label = metric.replace("_", " ")  # 'tail recall': the table's short headers are too terse for an axis
        paths.append(
            plots.plot_metric_vs_imbalance(
                series, path, metric_label=label, title=f"{dataset}: {label} vs imbalance (mean ± std)"
            )
        )
    return paths


def _pair_key(run: dict):
    return (run["fold"], run["seed"])


def paired_comparisons(runs, baseline: str, metrics, source: str = "report", rows=("method", "teacher")) -> list:
    """Each row vs the `baseline` row over runs matched by (fold, seed), per dataset and imbalance factor.

    Returns one dict per (dataset, imb, row, metric): {dataset, imb, method, baseline, metric, n (matched
    pairs defining the metric), unmatched (runs of either side without a partner), mean_diff, std_diff, t,
    df, p_t, wilcoxon_statistic, p_wilcoxon, wilcoxon_n_used} (statistics.paired_comparison; differences
    are method - baseline). Raises ValueError when the baseline is no row of any table, or a cell holds two
    runs of the same (fold, seed).
    """
    cells = {}
    for run in runs:
        cell = cells.setdefault((run["dataset"], run["imb"], row_label(run, rows)), {})
        key = _pair_key(run)
        if key in cell:
            raise ValueError(
                f"two runs of row {row_label(run, rows)!r} share fold {key[0]} and seed {key[1]} "
                f"({cell[key]['run_dir']}, {run['run_dir']}): pairs would be ambiguous; add a --rows "
                "field that tells them apart"
            )
        cell[key] = run
    if not any(label == baseline for _, _, label in cells):
        labels = sorted({label for _, _, label in cells})
        raise ValueError(f"--baseline {baseline!r} is not a row of the report; rows: {labels}")
    out = []
    for (dataset, imb, label), cell in sorted(
        cells.items(), key=lambda item: (item[0][0], str(item[0][1]), item[0][2])
    ):
        base = cells.get((dataset, imb, baseline))
        if label == baseline or base is None:
            continue
        shared = sorted(set(cell) & set(base), key=str)
        unmatched = len(set(cell) ^ set(base))
        for metric in metrics:
            pairs = [(metric_value(cell[k], source, metric), metric_value(base[k], source, metric)) for k in shared]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            record = {
                "dataset": dataset,
                "imb": imb,
                "method": label,
                "baseline": baseline,
                "metric": metric,
                "unmatched": unmatched,
                "pairs": [list(k) for k in shared],
            }
            if pairs:
                record.update(statistics.paired_comparison([a for a, _ in pairs], [b for _, b in pairs]))
            else:
                record.update(
                    n=0,
                    mean_diff=None,
                    std_diff=None,
                    t=None,
                    df=None,
                    p_t=None,
                    wilcoxon_statistic=None,
                    p_wilcoxon=None,
                    wilcoxon_n_used=0,
                )
            out.append(record)
    return out


def _format_p(p) -> str:
    return "—" if p is None else f"{p:.4g}"


def _format_diff(record: dict, scale: float, decimals: int) -> str:
    if record["mean_diff"] is None:
        return "—"
    text = f"{record['mean_diff'] * scale:+.{decimals}f}"
    return text + (f" ± {record['std_diff'] * scale:.{decimals}f}" if record["std_diff"] is not None else "")


PAIRED_HEADER = ("Method", "imb", "Metric", "n", "Δ vs baseline", "t", "p (t-test)", "W", "p (Wilcoxon)")


def _paired_cells(record: dict, scale: float, decimals: int) -> list:
    t = "—" if record["t"] is None else f"{record['t']:.3f}"
    w = "—" if record["wilcoxon_statistic"] is None else f"{record['wilcoxon_statistic']:g}"
    return [
        record["method"],
        "—" if record["imb"] is None else str(record["imb"]),
        METRIC_LABELS.get(record["metric"], record["metric"]),
        str(record["n"]),
        _format_diff(record, scale, decimals),
        t,
        _format_p(record["p_t"]),
        w,
        _format_p(record["p_wilcoxon"]),
    ]


def paired_markdown(records: list, baseline: str, scale: float = 100.0, decimals: int = 2) -> str:
    lines = [
        "",
        f"## Paired comparison with `{baseline}`",
        "",
        f"Runs matched by (fold, seed); Δ = method − baseline (×{scale:g}), mean ± std of the paired differences; "
        "two-sided paired t-test (df = n − 1) and exact Wilcoxon signed-rank test (zero differences dropped, "
        "ties averaged; with n ≤ 5 pairs its p cannot fall below 2/2^n, 0.0625 at n = 5).",
    ]
    for dataset in sorted({r["dataset"] for r in records}):
        lines += [
            "",
            f"### {dataset}",
            "",
            "| " + " | ".join(PAIRED_HEADER) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * (len(PAIRED_HEADER) - 3)) + "|",
        ]
        lines += [
            "| " + " | ".join(_paired_cells(r, scale, decimals)) + " |" for r in records if r["dataset"] == dataset
        ]
    unmatched = sum(r["unmatched"] for r in records if r["metric"] == records[0]["metric"]) if records else 0
    if unmatched:
        lines += ["", f"{unmatched} run(s) had no partner with the same (fold, seed) and were left out of the pairs."]
    return "\n".join(lines) + "\n"


def write_paired_csv(records: list, path: str) -> None:
    fields = [
        "dataset",
        "imb",
        "method",
        "baseline",
        "metric",
        "n",
        "unmatched",
        "mean_diff",
        "std_diff",
        "t",
        "df",
        "p_t",
        "wilcoxon_statistic",
        "p_wilcoxon",
        "wilcoxon_n_used",
    ]
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for record in records:
            writer.writerow(
                [
                    "" if record[k] is None else repr(record[k]) if isinstance(record[k], float) else record[k]
                    for k in fields
                ]
            )
    os.replace(path + ".tmp", path)


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table: the ten special characters escaped; ±, —, Δ, κ, − as math/text macros."""
    out = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    for plain, macro in (
        ("±", r"$\pm$"),
        ("—", "--"),
        ("Δ", r"$\Delta$"),
        ("κ", r"$\kappa$"),
        ("−", "-"),
        ("·", r"$\cdot$"),
        ("×", r"$\times$"),
    ):
        out = out.replace(plain, macro)
    return out


def latex(
    tables: dict, metrics, source: str, scale: float = 100.0, decimals: int = 2, paired=None, baseline: str = ""
) -> str:
    """The Markdown tables as LaTeX `tabular`s (booktabs: \\toprule, \\midrule, \\bottomrule), one per dataset,
    imbalance factors as \\multicolumn groups; plus the paired comparison table with `paired` records."""
    parts = [
        f"% launch/report.py: scores x{scale:g} on the '{source}' split, mean $\\pm$ std over runs; needs "
        "\\usepackage{booktabs}"
    ]
    for dataset, table in sorted(tables.items()):
        width = 1 + len(metrics)
        spec = "l" + ("|" + "r" * width) * len(table["columns"])
        lines = [f"% {latex_escape(dataset)}", r"\begin{tabular}{" + spec + "}", r"\toprule"]
        if any(c is not None for c in table["columns"]):
            groups = [r"\multicolumn{%d}{c}{imb %s}" % (width, latex_escape(c)) for c in table["columns"]]
            lines.append(" & ".join([""] + groups) + r" \\")
        header = ["Method"] + [
            latex_escape(h) for _ in table["columns"] for h in ["n"] + [METRIC_LABELS.get(m, m) for m in metrics]
        ]
        lines += [" & ".join(header) + r" \\", r"\midrule"]
        for row in table["rows"]:
            cells = [latex_escape(row)]
            for column in table["columns"]:
                cell = table["cells"].get((row, column))
                if cell is None:
                    cells += ["0"] + ["--"] * len(metrics)
                    continue
                cells += [str(cell["n"])] + [
                    latex_escape(_format_cell(cell["metrics"][m], cell["n"], scale, decimals)) for m in metrics
                ]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        parts.append("\n".join(lines))
    if paired:
        lines = [
            f"% paired comparison with {latex_escape(baseline)}: runs matched by (fold, seed)",
            r"\begin{tabular}{lll" + "r" * (len(PAIRED_HEADER) - 3) + "}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in PAIRED_HEADER) + r" \\",
            r"\midrule",
        ]
        for dataset in sorted({r["dataset"] for r in paired}):
            if len(tables) > 1:
                lines.append(r"\multicolumn{%d}{l}{\emph{%s}} \\" % (len(PAIRED_HEADER), latex_escape(dataset)))
            lines += [
                " & ".join(latex_escape(c) for c in _paired_cells(r, scale, decimals)) + r" \\"
                for r in paired
                if r["dataset"] == dataset
            ]
        lines += [r"\bottomrule", r"\end{tabular}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def make_report(
    patterns=(),
    sweep_dir=None,
    out_dir=None,
    metrics=DEFAULT_METRICS,
    source="report",
    rows=("method", "teacher"),
    ddof: int = 1,
    scale: float = 100.0,
    decimals: int = 2,
    plot_metric: str = "tail_recall",
    baseline: str = "",
    paired_metrics=None,
) -> dict:
    """Collects, aggregates and writes everything; returns {"markdown", "latex", "paths", "tables", "missing",
    "runs", "paired"}. With `baseline`, `paired_comparisons` over `paired_metrics` (default `metrics`)."""
    runs, missing = collect_runs(patterns, sweep_dir)
    if not runs:
        raise ValueError("no finished run (results.json) found" + (f"; unfinished: {missing}" if missing else ""))
    metrics = tuple(metrics)
    aggregate_metrics = metrics + ((plot_metric,) if plot_metric and plot_metric not in metrics else ())
    tables = aggregate(runs, aggregate_metrics, source, rows, ddof)
    # Checked before anything is written: a bad --baseline leaves no half-written report.
    paired = paired_comparisons(runs, baseline, tuple(paired_metrics or metrics), source, rows) if baseline else None
    out_dir = out_dir or (os.path.join(sweep_dir, "report") if sweep_dir else "report")
    os.makedirs(out_dir, exist_ok=True)
    text = markdown(tables, metrics, source, scale, decimals, missing)
    if paired is not None:
        text += paired_markdown(paired, baseline, scale, decimals)
    tex = latex(tables, metrics, source, scale, decimals, paired, baseline)
    paths = {
        "markdown": os.path.join(out_dir, "report.md"),
        "csv": os.path.join(out_dir, "report.csv"),
        "runs_csv": os.path.join(out_dir, "runs.csv"),
        "latex": os.path.join(out_dir, "report.tex"),
    }
    _write_text(paths["markdown"], text)
    _write_text(paths["latex"], tex)
    write_csv(tables, metrics, paths["csv"])
    write_runs_csv(runs, aggregate_metrics, source, paths["runs_csv"])
    if paired is not None:
        paths["paired_csv"] = os.path.join(out_dir, "paired.csv")
        write_paired_csv(paired, paths["paired_csv"])
    paths["plots"] = plot_tables(tables, plot_metric, out_dir) if plot_metric else []
    return {
        "markdown": text,
        "latex": tex,
        "paths": paths,
        "tables": tables,
        "missing": missing,
        "runs": runs,
        "paired": paired,
    }


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f.runs and not f.sweep_dir:
        raise app.UsageError("give --sweep_dir and/or --runs")
    try:
        out = make_report(
            f.runs,
            f.sweep_dir,
            f.out_dir,
            f.metrics,
            f.source,
            f.rows,
            f.ddof,
            f.scale,
            f.decimals,
            f.plot_metric,
            f.baseline,
            f.paired_metrics,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    print(out["markdown"])
    for name, path in out["paths"].items():
        print(f"{name}: {path}")


def _define_flags():
    # Defined only when run as a script, so tests can import this module next to other launchers.
    from absl import flags

    flags.DEFINE_multi_string("runs", [], "Glob of run folders or results.json files (repeatable).")
    flags.DEFINE_string("sweep_dir", None, "A launch/sweep.py root: reports every run in its sweep.json.")
    flags.DEFINE_string("out_dir", None, "Output folder (default <sweep_dir>/report, else ./report).")
    flags.DEFINE_enum(
        "source",
        "report",
        SOURCES,
        "Which results.json block: the report split of the best "
        "checkpoint, the selection split, or CRCKD's mean over the last evaluations.",
    )
    flags.DEFINE_list("metrics", list(DEFAULT_METRICS), "Columns, in order (full_report keys, or recall/<class>).")
    flags.DEFINE_list("rows", ["method", "teacher"], "Fields naming a row: results.json facts or config.<key>.")
    flags.DEFINE_integer("ddof", 1, "Delta degrees of freedom of the std (1: sample std, 0: population).")
    flags.DEFINE_float("scale", 100.0, "Multiplier of the shown scores (100: percentages).")
    flags.DEFINE_integer("decimals", 2, "Decimals shown.")
    flags.DEFINE_string("plot_metric", "tail_recall", "Metric plotted against the imbalance ratio ('' = none).")
    flags.DEFINE_string(
        "baseline",
        "",
        "Row label (e.g. 'bsm') every other row is compared with by paired "
        "t-test and exact Wilcoxon over matched (fold, seed) runs ('' = no comparison).",
    )
    flags.DEFINE_list("paired_metrics", [], "Metrics of the paired comparison (default: --metrics).")


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/report.py`."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
