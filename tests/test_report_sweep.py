"""launch/sweep.py grid expansion and print mode, launch/report.py tables and plot, on fabricated results.json
(the real mini sweep, trained end to end, is in tests/test_evaluate_predict.py)."""

import csv
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from foprokd_jax.cli import report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISIC_CONFIG = os.path.join(ROOT, "configs", "isic.py")
METRICS = ("bacc", "macro_f1", "tail_recall", "mcc")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fabricate_results(run, rng, old_format=False):
    """A results.json as train.py writes it, with random scores; tail_recall absent at imb 0.01."""
    grid = run["grid"]
    teacher = grid.get("teacher", None if grid["method"] == "bsm" else "moco_r50")  # the config's default
    scores = {
        "bacc": float(rng.uniform(0.3, 0.8)),
        "macro_f1": float(rng.uniform(0.2, 0.7)),
        "mcc": float(rng.uniform(0.1, 0.6)),
        "per_class_recall": {"NV": 0.9, "DF": float(rng.uniform())},
    }
    if grid["imb"] != "0.01":
        scores["tail_recall"] = float(rng.uniform(0.0, 0.5))
    results = {
        "method": grid["method"],
        "fold": grid["fold"],
        "imb": grid["imb"],
        "best_step": 4,
        "report": scores,
        "selection": {"bacc": 0.5},
        "class_names": ["NV", "DF"],
    }
    os.makedirs(run["workdir"], exist_ok=True)
    if old_format:  # before the dataset registry: no dataset/seed, the teacher's artifact record
        results["teacher"] = {"arch": "resnet50", "artifact": "teachers/x.npz"} if teacher else None
        with open(os.path.join(run["workdir"], "config.json"), "w") as f:
            json.dump({"seed": 0, "teacher": {"name": "moco_r50"}}, f)
    else:
        results.update(dataset="isic2019_lt", teacher=teacher, seed=0)
    with open(os.path.join(run["workdir"], "results.json"), "w") as f:
        json.dump(results, f)
    return results


def test_expand_grid_names_and_commands(tmp_path):
    runs = sweep.expand_grid(
        f"{ISIC_CONFIG}:runlocal",
        str(tmp_path),
        methods=["bsm", "ekd"],
        teachers=["moco_r50", "dinov2_s14"],
        imbs=["0.01"],
        folds=[1, 2],
        seeds=[3],
        overrides=["total_steps=2", "teacher.dtype=bfloat16"],
        python="py",
    )
    names = [run["name"] for run in runs]
    # bsm ignores the teacher axis: 2 folds; ekd: 2 teachers x 2 folds.
    assert names == [
        "bsm_imb0.01_fold1_seed3",
        "bsm_imb0.01_fold2_seed3",
        "ekd_moco_r50_imb0.01_fold1_seed3",
        "ekd_moco_r50_imb0.01_fold2_seed3",
        "ekd_dinov2_s14_imb0.01_fold1_seed3",
        "ekd_dinov2_s14_imb0.01_fold2_seed3",
    ]
    assert runs[2]["command"] == [
        "py",
        "-m",
        "foprokd_jax.cli.train",
        f"--config={ISIC_CONFIG}:runlocal,method=ekd,teacher=moco_r50,imb=0.01,fold=1",
        f"--workdir={tmp_path}/ekd_moco_r50_imb0.01_fold1_seed3",
        "--config.seed=3",
        "--config.total_steps=2",
        "--config.teacher.dtype=bfloat16",
    ]
    # A key only other methods read is not passed to a run ('bsm' has no teacher); others still are.
    assert runs[0]["command"][-2:] == ["--config.seed=3", "--config.total_steps=2"]
    with pytest.raises(FileNotFoundError, match="nope.py"):
        sweep.expand_grid("configs/nope.py", str(tmp_path), methods=["bsm"])
    with pytest.raises(ValueError, match="key=value"):
        sweep.expand_grid(ISIC_CONFIG, str(tmp_path), methods=["bsm"], overrides=["total_steps"])


def test_print_mode_then_report_over_fabricated_results(tmp_path):
    root = str(tmp_path / "sweep")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "sweep.py"),
            f"--config={ISIC_CONFIG}",
            "--methods=bsm,ekd",
            "--folds=1,2,3",
            "--imbs=0.01,0.002",
            f"--sweep_root={root}",
            "--mode=print",
            "--override=total_steps=2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 12 and all("--config.total_steps=2" in line for line in lines)
    assert shlex.split(lines[0])[:3] == ["python", "-m", "foprokd_jax.cli.train"]
    with open(os.path.join(root, "sweep.json")) as f:
        runs = json.load(f)["runs"]
    assert [shlex.join(run["command"]) for run in runs] == lines

    rng = np.random.default_rng(0)
    written = {}
    for index, run in enumerate(runs):
        if run["name"] == "ekd_imb0.002_fold3":
            os.makedirs(run["workdir"])  # an unfinished run: no results.json
            continue
        written[run["name"]] = _fabricate_results(run, rng, old_format=index % 2 == 0)

    out = report.make_report(sweep_dir=root, out_dir=str(tmp_path / "rep"), metrics=METRICS)
    assert out["missing"] == [os.path.abspath(os.path.join(root, "ekd_imb0.002_fold3"))]
    table = {row["method"]: row for row in _read_csv(out["paths"]["csv"])}
    # Old-format teacher records were resolved from config.json; bsm has no teacher in either format.
    assert set(table) == {"bsm", "ekd (moco_r50)"}
    markdown = out["markdown"]
    for method in ("bsm", "ekd"):
        for imb in ("0.01", "0.002"):
            cell = [
                written[f"{method}_imb{imb}_fold{fold}"]
                for fold in (1, 2, 3)
                if f"{method}_imb{imb}_fold{fold}" in written
            ]
            row = table["bsm" if method == "bsm" else "ekd (moco_r50)"]
            assert int(row[f"imb={imb}/n"]) == len(cell)
            for metric in METRICS:
                values = [r["report"][metric] for r in cell if metric in r["report"]]
                mean, std = row[f"imb={imb}/{metric}/mean"], row[f"imb={imb}/{metric}/std"]
                if not values:
                    assert mean == "" and std == ""
                    continue
                assert float(mean) == pytest.approx(np.mean(values), abs=1e-12)
                assert float(std) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
                shown = f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"
                assert shown in markdown
    md_lines = markdown.splitlines()
    header = next(line for line in md_lines if line.startswith("| Method"))
    assert header.split(" | ")[1:4] == ["imb 0.01 · n", "imb 0.01 · BAcc", "imb 0.01 · F1"]  # bacc first
    ekd_line = next(line for line in md_lines if line.startswith("| ekd (moco_r50) "))
    assert ekd_line.split(" | ")[1] == "3" and "| 2 |" in ekd_line  # n per cell: 3 at 0.01, 2 at 0.002
    assert "| — |" in ekd_line  # no tail class at imb 0.01: the tail cell is marked missing
    assert "ekd_imb0.002_fold3" in markdown
    assert len(_read_csv(out["paths"]["runs_csv"])) == 11
    (plot,) = out["paths"]["plots"]
    assert os.path.basename(plot) == "tail_recall_vs_imbalance_isic2019_lt.png"
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_rows_by_teacher_and_per_class_recall(tmp_path):
    runs = sweep.expand_grid(
        ISIC_CONFIG, str(tmp_path), methods=["ekd"], teachers=["moco_r50", "dinov2_s14"], imbs=["0.005"], folds=[1, 2]
    )
    rng = np.random.default_rng(1)
    written = [_fabricate_results(run, rng) for run in runs]
    out = report.make_report(
        [str(tmp_path / "*")], out_dir=str(tmp_path / "rep"), metrics=("recall/DF",), plot_metric="", ddof=0
    )
    rows = {row["method"]: row for row in _read_csv(out["paths"]["csv"])}
    assert set(rows) == {"ekd (moco_r50)", "ekd (dinov2_s14)"}
    df = [r["report"]["per_class_recall"]["DF"] for r in written if r["teacher"] == "dinov2_s14"]
    assert float(rows["ekd (dinov2_s14)"]["imb=0.005/recall/DF/mean"]) == pytest.approx(np.mean(df))
    assert float(rows["ekd (dinov2_s14)"]["imb=0.005/recall/DF/std"]) == pytest.approx(np.std(df))
    assert out["paths"]["plots"] == []
    # Nested blocks of the report (the calibration that evaluation.uncertainty_report adds) are columns too.
    run = {
        "results": {
            "report": {
                "calibration": {"ece": 0.125, "temperature_scaling": {"after": {"ece": 0.03}}},
                "per_class_recall": {"DF": 0.5},
            }
        }
    }
    assert report.metric_value(run, "report", "calibration/ece") == 0.125
    assert report.metric_value(run, "report", "calibration/temperature_scaling/after/ece") == 0.03
    assert report.metric_value(run, "report", "recall/DF") == 0.5
    assert report.metric_value(run, "report", "calibration/nope") is None
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        report.make_report([str(tmp_path / "nothing*")])


def test_report_datasets_without_imbalance_factors_share_one_csv(tmp_path):
    rng = np.random.default_rng(2)
    values = {}
    for dataset, imb, fold in [("isic2019_lt", "0.01", 1), ("aptos", None, 1), ("aptos", None, 2)]:
        run_dir = tmp_path / f"{dataset}_{fold}"
        run_dir.mkdir()
        bacc = float(rng.uniform())
        values.setdefault(dataset, []).append(bacc)
        with open(run_dir / "results.json", "w") as f:
            json.dump(
                {
                    "method": "crckd",
                    "dataset": dataset,
                    "imb": imb,
                    "fold": fold,
                    "teacher": None,
                    "report": {"bacc": bacc},
                },
                f,
            )
    out = report.make_report(
        [str(tmp_path / "*_*")], out_dir=str(tmp_path / "rep"), metrics=("bacc",), plot_metric="tail_recall"
    )
    rows = {row["dataset"]: row for row in _read_csv(out["paths"]["csv"])}
    assert rows["aptos"]["n"] == "2" and rows["aptos"]["imb=0.01/n"] == ""
    assert float(rows["aptos"]["bacc/mean"]) == pytest.approx(np.mean(values["aptos"]))
    assert float(rows["isic2019_lt"]["imb=0.01/bacc/mean"]) == pytest.approx(values["isic2019_lt"][0])
    assert rows["isic2019_lt"]["imb=0.01/bacc/std"] == ""  # one run: no sample std
    assert "### aptos" in out["markdown"] and "| Method | n | BAcc |" in out["markdown"]
    # Only the dataset with imbalance factors gets the plot.
    assert [os.path.basename(p) for p in out["paths"]["plots"]] == ["tail_recall_vs_imbalance_isic2019_lt.png"]


def _write_run(folder, method, fold, seed, scores, imb="0.01", teacher=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(
            {
                "method": method,
                "dataset": "isic2019_lt",
                "imb": imb,
                "fold": fold,
                "seed": seed,
                "teacher": teacher,
                "report": scores,
            },
            f,
        )


def test_paired_comparison_with_a_baseline_equals_scipy_and_is_in_every_output(tmp_path):
    import scipy.stats

    rng = np.random.default_rng(4)
    base, ekd = {}, {}
    for fold in (1, 2, 3, 4, 5):
        base[fold] = {"bacc": float(rng.uniform(0.5, 0.6)), "macro_f1": float(rng.uniform(0.4, 0.5))}
        ekd[fold] = {
            "bacc": base[fold]["bacc"] + float(rng.normal(0.02, 0.01)),
            "macro_f1": base[fold]["macro_f1"] + float(rng.normal(0.0, 0.02)),
        }
        _write_run(tmp_path / "runs" / f"bsm_{fold}", "bsm", fold, 0, base[fold])
        if fold != 5:  # ekd fold 5 unfinished: fold 5 of the baseline has no partner
            _write_run(tmp_path / "runs" / f"ekd_{fold}", "ekd", fold, 0, ekd[fold], teacher="moco_r50")
    _write_run(tmp_path / "runs" / "ekd_9", "ekd", 9, 0, {"bacc": 0.9}, teacher="moco_r50")  # no baseline partner
    out = report.make_report(
        [str(tmp_path / "runs" / "*")],
        out_dir=str(tmp_path / "rep"),
        metrics=("bacc", "macro_f1"),
        plot_metric="",
        baseline="bsm",
    )
    records = {r["metric"]: r for r in out["paired"]}
    assert set(records) == {"bacc", "macro_f1"}
    for metric, record in records.items():
        a = [ekd[f][metric] for f in (1, 2, 3, 4)]
        b = [base[f][metric] for f in (1, 2, 3, 4)]
        assert record["method"] == "ekd (moco_r50)" and record["n"] == 4 and record["unmatched"] == 2
        assert record["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)), abs=1e-15)
        assert record["p_t"] == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-10)
        assert record["p_wilcoxon"] == pytest.approx(scipy.stats.wilcoxon(a, b).pvalue, rel=1e-12)
        assert record["pairs"] == [[1, 0], [2, 0], [3, 0], [4, 0]]
    rows = _read_csv(out["paths"]["paired_csv"])
    assert [row["metric"] for row in rows] == ["bacc", "macro_f1"]
    assert float(rows[0]["p_t"]) == records["bacc"]["p_t"]  # the CSV keeps the exact value
    assert "## Paired comparison with `bsm`" in out["markdown"]
    assert f"| {records['bacc']['p_t']:.4g} |" in out["markdown"]
    with open(out["paths"]["latex"]) as f:
        tex = f.read()
    assert tex == out["latex"]
    assert tex.count(r"\begin{tabular}") == 2 and tex.count(r"\bottomrule") == 2
    assert r"ekd (moco\_r50) & 5 & " in tex  # 4 paired folds + fold 9
    mean, std = np.mean([base[f]["bacc"] for f in base]), np.std([base[f]["bacc"] for f in base], ddof=1)
    assert rf"bsm & 5 & {100 * mean:.2f} $\pm$ {100 * std:.2f} & " in tex
    assert r"\multicolumn{3}{c}{imb 0.01}" in tex
    # A baseline that is no row: refused before anything is written, as one error line from the CLI.
    with pytest.raises(ValueError, match="'fopro' is not a row"):
        report.make_report([str(tmp_path / "runs" / "*")], out_dir=str(tmp_path / "nope"), baseline="fopro")
    assert not os.path.exists(tmp_path / "nope")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "report.py"),
            f"--runs={tmp_path}/runs/*",
            f"--out_dir={tmp_path}/cli",
            "--baseline=fopro",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: --baseline 'fopro' is not a row of the report; rows: ['bsm', 'ekd (moco_r50)']"
    ]
    # Two runs of one row with the same fold and seed cannot be paired.
    _write_run(tmp_path / "runs" / "bsm_1_again", "bsm", 1, 0, {"bacc": 0.5})
    with pytest.raises(ValueError, match="share fold 1 and seed 0"):
        report.make_report([str(tmp_path / "runs" / "*")], out_dir=str(tmp_path / "rep2"), baseline="bsm")


def test_latex_escape():
    assert report.latex_escape("a_b & 50% #1 {x} ~ ^ \\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} "
        r"\textasciicircum{} \textbackslash{}"
    )
    assert report.latex_escape("70.1 ± 2.0 —") == r"70.1 $\pm$ 2.0 --"
