"""benchmarks/accelerator_check.sh + .py (issue 18 part 2): the CPU dry run end to end, and the driver's pieces.

The dry run executes every stage of the accelerator check on the CPU backend with tiny models: the CPU-vs-device step
comparison (here CPU against itself), the bfloat16 step, device augmentation, the demo, and the benchmark rows with
their JSON and Markdown outputs. Its numbers mean nothing; the test checks that every stage ran and wrote what the
accelerator run will write.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.sh")


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable)
    # One CPU device, as on a one-GPU machine (conftest's 8 fake devices are for the in-process tests).
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def test_dry_run_writes_checks_json_and_markdown(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", SCRIPT, "--dry_run"],
        env=dict(_env(), OUT_DIR=str(out)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads((out / "accelerator_checks.json").read_text())
    names = [(c["check"], c.get("method")) for c in checks]
    assert names == [
        ("step_matches_cpu", "bsm"),
        ("step_matches_cpu", "ekd"),
        ("step_matches_cpu", "fopro"),
        ("bf16_step", "bsm"),
        ("device_augment_matches_cpu", None),
        ("demo", None),
    ]
    assert all(c["ok"] for c in checks), checks
    # CPU against CPU: the same program on the same inputs gives the same metrics, bit for bit.
    for c in checks[:3]:
        assert c["max_rel_step1"] == 0.0 and c["max_rel_step2"] == 0.0 and len(c["device_metrics"]) == 2
    bf16 = checks[3]
    assert bf16["params_float32"] and bf16["finite"] and bf16["loss_rel_to_float32"] > 0.0  # bf16 really differs
    assert checks[4]["changed_by_augmentation"] and checks[4]["fraction_of_pixels_differing"] == 0.0
    assert checks[5]["results_scalars"], checks[5]

    bench = json.loads((out / "accelerator_bench.json").read_text())
    assert bench["dry_run"] is True
    rows = bench["rows"]
    assert [(r["method"], r["dtype"], r["device_augment"]) for r in rows] == [
        ("bsm", "float32", "off"),
        ("ekd", "float32", "off"),
        ("fopro", "float32", "off"),
        ("bsm", "bfloat16", "on"),
    ]
    for r in rows:
        assert r["backend"] == "cpu" and r["image_size"] == 32 and r["batch_size"] == 8
        assert r["img_per_s"] > 0 and r["step_ms"] > 0 and r["flops_per_step"] > 0
        assert r["mfu"] is None and r["peak_bf16_tflops"] is None  # no peak is known for a CPU
        assert r["xla_memory_mib"] > 0
    # The EKD step runs the teacher; the BSM step does not; FoPro-KD adds the teacher's input gradient.
    flops = {r["method"]: r["flops_per_step"] for r in rows[:3]}
    assert flops["bsm"] < flops["ekd"] < flops["fopro"]
    markdown = (out / "accelerator_bench.md").read_text()
    assert "Checks: step_matches_cpu/bsm=ok" in markdown and "demo=ok" in markdown
    assert sum(line.startswith("|") for line in markdown.splitlines()) == 2 + len(rows)  # header, separator, rows
    assert f"| bsm | 8 | bfloat16 | on | {rows[3]['img_per_s']} |" in markdown


def test_bad_flag_is_one_error_line_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator_check", "--dry_run", f"--out_dir={out}", "--methods=ekd,nope"],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --methods has unknown entries ['nope'] (allowed: ['bsm', 'ekd', 'fopro'])"]
    assert not out.exists()


def test_peak_table_matches_device_kinds():
    from benchmarks import accelerator_check as ac

    assert ac.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert ac.peak_tflops("NVIDIA H100 PCIe") == 756.0  # the PCIe card before the SXM entry
    assert ac.peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert ac.peak_tflops("TPU v5 lite") == 197.0
    assert ac.peak_tflops("TPU v4") == 275.0
    assert ac.peak_tflops("cpu") is None


def test_bench_grid_puts_the_main_setting_first():
    from benchmarks import accelerator_check as ac

    grid = ac.bench_grid(["bsm", "ekd"], [32, 128], ["bfloat16", "float32"], ["off", "on"])
    assert len(grid) == 16 and len(set(grid)) == 16
    assert grid[:8] == [
        ("bsm", 32, "bfloat16", "off"),
        ("ekd", 32, "bfloat16", "off"),
        ("bsm", 32, "bfloat16", "on"),  # one setting changed: augmentation, then dtype, then batch
        ("ekd", 32, "bfloat16", "on"),
        ("bsm", 32, "float32", "off"),
        ("ekd", 32, "float32", "off"),
        ("bsm", 128, "bfloat16", "off"),
        ("ekd", 128, "bfloat16", "off"),
    ]
    assert grid[-2:] == [("bsm", 128, "float32", "on"), ("ekd", 128, "float32", "on")]


def test_out_of_time_stops_before_the_deadline(monkeypatch):
    from benchmarks import accelerator_check as ac

    ac.FLAGS(["accelerator_check"])  # parse defaults outside absl's app
    monkeypatch.setattr(ac.FLAGS, "budget_s", 100.0)
    monkeypatch.setattr(ac.FLAGS, "deadline_unix", 1000.0)
    assert ac.out_of_time(elapsed_s=50.0, longest_row_s=30.0, now_unix=900.0) == ""
    assert "deadline" in ac.out_of_time(elapsed_s=50.0, longest_row_s=30.0, now_unix=980.0)
    assert "budget" in ac.out_of_time(elapsed_s=101.0, longest_row_s=0.0, now_unix=0.0)


@pytest.mark.parametrize("value", [None, 2.5])
def test_markdown_table_formats_rows_and_skips(value):
    from benchmarks import accelerator_check as ac

    row = dict(
        method="ekd",
        image_size=224,
        batch_size=32,
        dtype="bfloat16",
        device_augment="off",
        device_kind="NVIDIA H100 80GB HBM3",
        backend="gpu",
        jax="0.10.2",
        img_per_s=3000.0,
        step_ms=10.67,
        tflops_per_s=53.8,
        peak_bf16_tflops=989.4,
        mfu=0.0544,
        xla_memory_mib=value,
        device_peak_mib_so_far=1234.5,
    )
    skipped = dict(method="fopro", batch_size=128, dtype="float32", device_augment="on", skipped="--budget_s spent")
    table = ac.markdown_table([row, skipped], [dict(check="demo", ok=True)])
    assert table.startswith("Device: NVIDIA H100 80GB HBM3 (gpu), jax 0.10.2, 224 px; MFU against 989.4 TFLOP/s")
    assert "Checks: demo=ok." in table
    mem = "-" if value is None else "2.5"
    assert f"| ekd | 32 | bfloat16 | off | 3000.0 | 10.67 | 53.8 | 5.4% | {mem} | 1234.5 |" in table
    assert "| fopro | 128 | float32 | on | --budget_s spent | | | | | |" in table
