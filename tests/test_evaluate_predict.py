"""The evaluation stack end to end on a real mini sweep (launch/sweep.py --mode=local, 2 methods x 2 folds x
2 imbalance factors): launch/report.py against the results files, launch/evaluate.py against results.json,
launch/predict.py from a workdir vs from the exported student; plus evaluation.predict_split on a toy model."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import isic
from foprokd_jax import calibration, checkpointing, demo, evaluation, export, metrics, parallel
from foprokd_jax.cli import predict, report, sweep
from foprokd_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- predict_split on a toy model ----


class _ToySource:
    """13 random 4x4 images; label = index % 3 (so the source order is visible in the labels)."""

    def __init__(self, n=13):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": np.int32(i % 3)}


def _toy_predict_step(mesh, sharded_output):
    """Logits = per-channel mean pixel of each image: replicated (all_gather) or left sharded on 'data'."""

    def per_device(state, batch):
        logits = jnp.mean(batch["image"].astype(jnp.float32), axis=(1, 2)) * state
        return jax.lax.all_gather(logits, parallel.DATA_AXIS, tiled=True) if not sharded_output else logits

    out_specs = P(parallel.DATA_AXIS) if sharded_output else P()
    return jax.jit(
        jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS)), out_specs=out_specs, check_vma=False
        )
    )


@pytest.mark.parametrize("sharded_output", [False, True])
def test_predict_split_keeps_source_order_and_drops_padding(sharded_output):
    source = _ToySource()
    expected = source.images.astype(np.float32).mean(axis=(1, 2)) * 2.0
    for num_devices in (1, 8):
        mesh = parallel.make_mesh(num_devices)
        logits, labels = evaluation.predict_split(
            _toy_predict_step(mesh, sharded_output), jnp.float32(2.0), source, 8, mesh
        )  # 13 examples in 2 global batches of 8: 3 padded
        assert logits.dtype == np.float32 and logits.shape == (13, 3)
        np.testing.assert_allclose(logits, expected, rtol=1e-6)
        np.testing.assert_array_equal(labels, np.arange(13) % 3)
    with pytest.raises(ValueError, match="divisible"):
        evaluation.predict_split(_toy_predict_step(mesh, False), jnp.float32(1.0), source, 12, mesh)


# ---- a real mini sweep: 2 methods x 2 folds x 2 imbalance factors, trained for 2 steps at 16 px ----

METRICS = ("bacc", "macro_f1", "tail_recall", "mcc")
CHILD_ENV = {  # one CPU device in the child processes (8 fake ones only cost compile time here), and every
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",  # compilation cached, small ones included
    "JAX_NUM_CPU_DEVICES": "1",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}


@pytest.fixture(scope="module")
def mini_sweep(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("evalpred"))
    data = os.path.join(root, "isic")
    # n_max=1: one training image per class at every factor, so every run has the same Balanced-Softmax prior
    # and the children reuse each other's compiled steps from the shared compilation cache.
    synthetic.write_synthetic_isic(
        data,
        n_max=1,
        val_per_class=1,
        test_per_class=2,
        image_sizes=((20, 16), (16, 16)),
        folds=(1, 2),
        imbs=("0.01", "0.002"),
        seed=0,
    )
    teacher_config = isic.get_config("method=ekd,runlocal")
    teacher_config.unlock()
    teacher_config.input.image_size = 16
    teacher_config.teacher.update(artifact=os.path.join(data, "teacher.npz"), arch="demo_random_resnet")
    demo.ensure_demo_teacher(teacher_config)
    overrides = [
        f"input.image_root={data}",
        f"input.split_dir={data}/splits",
        f"input.prepared_dir={data}/tfds",
        "input.image_size=16",
        "total_steps=2",
        "eval_every_steps=1",
        "num_devices=1",
        f"teacher.artifact={data}/teacher.npz",
        "teacher.arch=demo_random_resnet",
    ]
    kwargs = dict(
        config=f"{os.path.join(ROOT, 'configs', 'isic.py')}:runlocal",
        sweep_root=os.path.join(root, "sweep"),
        overrides=overrides,
        compilation_cache=os.path.join(root, "jax_cache"),
    )
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CHILD_ENV.items():
            mp.setenv(key, value)
        status = sweep.sweep(methods=["bsm", "ekd"], folds=[1, 2], imbs=["0.01", "0.002"], echo=lines.append, **kwargs)
    assert status == 0, "\n".join(lines)
    with open(os.path.join(kwargs["sweep_root"], "sweep.json")) as f:
        runs = {run["name"]: run for run in json.load(f)["runs"]}
    results = {}
    for name, run in runs.items():
        with open(os.path.join(run["workdir"], "results.json")) as f:
            results[name] = json.load(f)
    ekd = "ekd_imb0.01_fold1"
    return {
        "root": root,
        "data": data,
        "runs": runs,
        "results": results,
        "lines": lines,
        "kwargs": kwargs,
        "workdir": runs[ekd]["workdir"],
        "ekd_results": results[ekd],
    }


@pytest.fixture(scope="module")
def restored(mini_sweep):
    """One EKD run rebuilt from its workdir, once (rebuilding compiles the student's init: seconds on CPU)."""
    return evaluation.restore_run(mini_sweep["workdir"], "best")


def test_mini_sweep_report_equals_the_results_files(mini_sweep):
    lines = mini_sweep["lines"]
    assert lines[0] == "sweep: 8 runs, 0 already done, 8 to run"
    assert any(line.startswith("[8/8] ekd_imb0.002_fold2: done") and "ETA" in line for line in lines)
    assert all(run["status"] == "done" for run in mini_sweep["runs"].values())
    sweep_root = mini_sweep["kwargs"]["sweep_root"]
    out = report.make_report(sweep_dir=sweep_root, metrics=METRICS)
    rows = {row["method"]: row for row in _read_csv(out["paths"]["csv"])}
    assert set(rows) == {"bsm", "ekd (moco_r50)"}
    for method, label in (("bsm", "bsm"), ("ekd", "ekd (moco_r50)")):
        for imb in ("0.01", "0.002"):
            cell = [mini_sweep["results"][f"{method}_imb{imb}_fold{fold}"]["report"] for fold in (1, 2)]
            assert rows[label][f"imb={imb}/n"] == "2"
            for metric in METRICS:
                values = [r[metric] for r in cell]
                assert float(rows[label][f"imb={imb}/{metric}/mean"]) == pytest.approx(np.mean(values), abs=1e-12)
                assert float(rows[label][f"imb={imb}/{metric}/std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
                assert f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}" in out["markdown"]
    assert out["paths"]["plots"] == [os.path.join(sweep_root, "report", "tail_recall_vs_imbalance_isic2019_lt.png")]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_reproduces_results_json(mini_sweep, restored):
    results = mini_sweep["ekd_results"]
    out = evaluation.write_evaluation(restored, results["protocol"]["report_on"])
    assert out["checkpoint_step"] == results["best_step"]
    saved = results["report"]
    shared = [key for key in saved if key in out]
    assert {"bacc", "accuracy", "macro_f1", "mcc", "per_class_recall", "confusion"} <= set(shared)
    for key in shared:
        assert out[key] == saved[key], key
    for key in ("auc", "kappa_quadratic", "macro_specificity"):  # the full report's extra numbers
        assert key in out
    with open(out["files"]["metrics.json"]) as f:
        assert json.load(f)["bacc"] == saved["bacc"]
    rows = _read_csv(out["files"]["predictions.csv"])
    test_ids = [str(i) for i in restored.dataset.ids["test"]]
    assert [row["image_id"] for row in rows] == test_ids
    probs = np.array([[float(row[f"p_{name}"]) for name in results["class_names"]] for row in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    confusion = metrics.confusion_from_vectors(
        [int(r["label"]) for r in rows], [int(r["prediction"]) for r in rows], len(results["class_names"])
    )
    assert confusion.tolist() == saved["confusion"]
    for name in ("confusion_matrix.png", "per_class_recall.png", "reliability_diagram.png"):
        assert os.path.getsize(out["files"][name]) > 0
    # Calibration of the same probabilities the CSV holds (6 significant digits), the temperature fitted on
    # val, and bootstrap intervals around the report's own numbers.
    labels = np.array([int(r["label"]) for r in rows])
    assert out["calibration"]["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(labels)), labels])), rel=1e-4)
    assert out["calibration"]["ece"] == pytest.approx(calibration.expected_calibration_error(probs, labels), abs=1e-4)
    scaling = out["calibration"]["temperature_scaling"]
    assert scaling["fitted_on"] == "val" and scaling["temperature"] > 0
    assert scaling["fit_nll_after"] <= scaling["fit_nll_before"] + 1e-12
    boot = out["bootstrap"]
    assert boot["n_resamples"] == 1000 and boot["bacc"]["estimate"] == pytest.approx(saved["bacc"], abs=1e-12)
    assert boot["bacc"]["low"] <= saved["bacc"] <= boot["bacc"]["high"]
    assert set(boot["per_class_recall"]) == set(results["class_names"])


def test_evaluate_cli_selection_split_and_errors(mini_sweep, restored, tmp_path):
    results = mini_sweep["ekd_results"]
    # The sweep's compilation cache and device count: the CLI then finds the compiled model ready.
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=mini_sweep["kwargs"]["compilation_cache"],
        **CHILD_ENV,
    )
    cli = [sys.executable, os.path.join(ROOT, "launch", "evaluate.py"), f"--workdir={mini_sweep['workdir']}"]
    r = subprocess.run(
        cli + [f"--split={results['protocol']['select_on']}", f"--out_dir={tmp_path}/sel"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "sel" / "metrics.json") as f:
        out = json.load(f)
    for key in ("bacc", "macro_f1", "mcc", "per_class_recall", "confusion"):
        assert out[key] == results["selection"][key], key
    # Evaluating val itself: no in-sample temperature fit; the other statistics are there.
    assert "temperature_scaling" not in out["calibration"]
    assert "evaluated split 'val'" in out["calibration"]["temperature_scaling_skipped"]
    assert {"ece", "ece_mass", "brier", "nll"} <= set(out["calibration"]) and "bootstrap" in out
    assert "calibration: ECE" in r.stdout and "bootstrap 95 % CI (1000 replicates)" in r.stdout
    bad = subprocess.run(cli + ["--num_bins=0"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == "error: --num_bins must be >= 1, got 0"
    with checkpointing.Checkpointer(mini_sweep["workdir"]) as ckpt:
        assert evaluation.resolve_checkpoint(ckpt, "latest") == 2
        assert evaluation.resolve_checkpoint(ckpt, "best") == results["best_step"]
        with pytest.raises(ValueError, match="kept steps"):
            evaluation.resolve_checkpoint(ckpt, "999")
        with pytest.raises(ValueError, match="not 'best', 'latest'"):
            evaluation.resolve_checkpoint(ckpt, "last")
    with pytest.raises(ValueError, match="split 'nope'"):
        evaluation.restored_split_report(restored, "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluation.evaluate_run(str(tmp_path))


def test_predict_from_workdir_equals_exported_artifact(mini_sweep, restored, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    data = mini_sweep["data"]
    source_dir = os.path.join(data, "ISIC_2019_Training_Input")
    test_ids = [str(i) for i in restored.dataset.ids["test"]][:5]
    for image_id in test_ids[:4]:
        shutil.copy(os.path.join(source_dir, image_id + ".jpg"), images / (image_id + ".jpg"))
    from PIL import Image

    with Image.open(os.path.join(source_dir, test_ids[4] + ".jpg")) as img:
        img.convert("L").save(images / (test_ids[4] + ".png"))  # a grey PNG: converted to RGB like training
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (images / "notes.txt").write_text("ignored: not an image extension")

    artifact_path = str(tmp_path / "student.npz")
    from_run = predict.predict(
        str(images),
        str(tmp_path / "run.csv"),
        workdir=mini_sweep["workdir"],
        export_path=artifact_path,
        restored=restored,
    )
    assert [os.path.basename(p) for p, _ in from_run["skipped"]] == ["broken.jpg"]
    assert len(from_run["paths"]) == 5
    with open(tmp_path / "run.csv.skipped.csv") as f:
        assert "broken.jpg" in f.read()

    # The artifact holds the student only: its params and BN statistics, no teacher, optimizer or prompt.
    with np.load(artifact_path) as npz:
        assert all(k.split("/")[0] in ("params", "batch_stats") for k in npz.files)
        assert any("p_free" in k for k in npz.files)  # EKD's projector is part of the student
    os.rename(os.path.join(data, "teacher.npz"), os.path.join(data, "teacher.moved"))
    try:
        from_artifact = predict.predict(str(images), str(tmp_path / "artifact.csv"), artifact_path=artifact_path)
    finally:
        os.rename(os.path.join(data, "teacher.moved"), os.path.join(data, "teacher.npz"))
    np.testing.assert_allclose(from_artifact["probs"], from_run["probs"], rtol=1e-5, atol=1e-6)
    assert from_artifact["class_names"] == mini_sweep["ekd_results"]["class_names"]
    assert _read_csv(tmp_path / "artifact.csv")[0]["path"] == os.path.basename(from_run["paths"][0])

    # Resized like training: the JPEGs give exactly the probabilities evaluate.py computes from the dataset.
    out = evaluation.write_evaluation(restored, "test", out_dir=str(tmp_path / "eval"))
    by_id = {row["image_id"]: row for row in _read_csv(out["files"]["predictions.csv"])}
    for path, row in zip(from_run["paths"], from_run["probs"]):
        image_id, extension = os.path.splitext(os.path.basename(path))
        if extension != ".jpg":
            continue  # the grey PNG is not the dataset's image
        expected = [float(by_id[image_id][f"p_{name}"]) for name in from_run["class_names"]]
        np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-6)


def test_exported_student_is_verified(mini_sweep, restored, tmp_path):
    path = str(tmp_path / "student.npz")
    export.export_student(path, restored)
    module, variables, class_names = export.load_student(path)
    assert class_names == mini_sweep["ekd_results"]["class_names"]
    probs = export.predict_probs(module, variables, np.zeros((3, 16, 16, 3), np.uint8), batch_size=2)
    assert probs.shape == (3, 8)
    with open(path, "r+b") as f:  # flip one byte: the sha256 in the sidecar no longer matches
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match="sha256"):
        export.load_student(path)
    with pytest.raises(ValueError, match="not an exported student"):
        export.load_student(os.path.join(mini_sweep["data"], "teacher.npz"))
    with pytest.raises(ValueError, match="exactly one"):
        predict.predict(str(tmp_path), str(tmp_path / "x.csv"))


def test_explain_worst_classified_test_images_of_a_run(mini_sweep, restored, tmp_path):
    """launch/explain.py's code on a trained run: per class the test image with the lowest true-class probability,
    explained for its true class at the student's last stage."""
    from foprokd_jax import explain
    from foprokd_jax.cli import explain as explain_cli

    out = explain_cli.explain(
        str(tmp_path / "cams"), workdir=mini_sweep["workdir"], worst_per_class=1, target="label", restored=restored
    )
    source = restored.dataset.sources["test"]
    logits, labels = evaluation.predict_split(
        restored.parts.predict_step, restored.state, source, restored.config.input.eval_batch_size, restored.mesh
    )
    probs = metrics.softmax(logits)
    chosen = explain.worst_classified(probs, labels, 1)
    assert len(chosen) == len(np.unique(labels))
    ids = restored.dataset.ids["test"]
    rows = out["rows"]
    assert [row["image_id"] for row in rows] == [str(ids[i]) for i in chosen]
    assert [row["target"] for row in rows] == [row["label"] for row in rows] == labels[chosen].tolist()
    # The explained student (export.InferenceStudent on the run's variables) scores as the run's predict_step.
    np.testing.assert_allclose([row["p_target"] for row in rows], probs[chosen, labels[chosen]], rtol=1e-4, atol=1e-6)
    assert out["target_path"][0] == "trunk" and out["target_path"][-1].startswith("layer")
    assert out["maps"]["gradcam"].shape == (len(chosen), 16, 16)
    assert os.path.isfile(os.path.join(out["out_dir"], rows[0]["png"]))


def test_sweep_skips_done_runs_resumes_unfinished_and_reports_failures(mini_sweep, monkeypatch):
    """Runs last: it rewrites the sweep's sweep.json with another grid."""
    for key, value in CHILD_ENV.items():
        monkeypatch.setenv(key, value)
    kwargs, lines = mini_sweep["kwargs"], []
    assert sweep.sweep(methods=["bsm", "ekd"], folds=[1, 2], imbs=["0.01", "0.002"], echo=lines.append, **kwargs) == 0
    assert lines[0] == "sweep: 8 runs, 8 already done, 0 to run"
    # A run without results.json is started again (train.py resumes it) and a failing run (fold 3 has no
    # split files) is reported at the end with a non-zero status, after the other runs.
    resumed = os.path.join(kwargs["sweep_root"], "bsm_imb0.01_fold1")
    os.remove(os.path.join(resumed, "results.json"))
    lines.clear()
    assert sweep.sweep(methods=["bsm"], folds=[3, 1], imbs=["0.01"], echo=lines.append, **kwargs) == 1
    assert lines[1] == "[1/2] bsm_imb0.01_fold3: starting"
    assert "[2/2] bsm_imb0.01_fold1: resuming" in lines
    assert lines[-1].startswith("  bsm_imb0.01_fold3: exit 1")
    with open(os.path.join(resumed, "results.json")) as f:
        assert json.load(f)["report"] == mini_sweep["results"]["bsm_imb0.01_fold1"]["report"]
    with open(os.path.join(kwargs["sweep_root"], "bsm_imb0.01_fold3", "train.log")) as f:
        assert "skin3" in f.read()  # the error names the missing split file
    with open(os.path.join(kwargs["sweep_root"], "sweep.json")) as f:
        assert [run["status"] for run in json.load(f)["runs"]] == ["failed", "done"]
