"""MetricWriter (JSONL + TensorBoard without TF), crash-robust reading, NaN checks, ETA, and plots."""

import json
import math
import os
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from foprokd_jax import finite_guard, plots, progress
from foprokd_jax.metric_writer import MetricWriter, read_metrics_jsonl
from foprokd_jax.progress import ProgressMeter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_tensorboard_scalars(logdir):
    accumulator = EventAccumulator(logdir)
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_scalars_round_trip_through_jsonl_and_tensorboard(tmp_path):
    workdir = str(tmp_path / "run")
    with MetricWriter(workdir) as writer:
        writer.write_scalars(10, {"train/loss": 2.5, "train/lr": np.float32(0.1)})
        writer.write_scalars(20, {"train/loss": np.array(1.25), "val/bacc": 0.375, "train/count": np.int64(7)})

    records = read_metrics_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert records == [
        {"step": 10, "train/loss": 2.5, "train/lr": pytest.approx(0.1)},
        {"step": 20, "train/loss": 1.25, "val/bacc": 0.375, "train/count": 7},
    ]
    assert isinstance(records[1]["train/count"], int)

    scalars = read_tensorboard_scalars(os.path.join(workdir, "tb"))
    assert scalars["train/loss"] == [(10, 2.5), (20, 1.25)]  # exact in float32
    assert scalars["val/bacc"] == [(20, 0.375)]
    assert scalars["train/lr"][0][0] == 10 and scalars["train/lr"][0][1] == pytest.approx(0.1)
    assert "tensorflow" not in sys.modules


def test_non_finite_values_keep_the_jsonl_valid(tmp_path):
    with MetricWriter(str(tmp_path)) as writer:
        writer.write_scalars(1, {"loss": float("nan"), "grad": float("inf"), "low": -np.inf, "ok": 1.0})
    raw = (tmp_path / "metrics.jsonl").read_text()
    strict = json.loads(raw, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    assert strict == {"step": 1, "loss": "nan", "grad": "inf", "low": "-inf", "ok": 1.0}
    [record] = read_metrics_jsonl(str(tmp_path / "metrics.jsonl"))
    assert math.isnan(record["loss"]) and record["grad"] == math.inf and record["low"] == -math.inf
    assert math.isnan(read_tensorboard_scalars(str(tmp_path / "tb"))["loss"][0][1])


def test_each_write_is_on_disk_before_close(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write_scalars(3, {"loss": 0.5})
    # Not closed, not flushed: a crash right now must not lose the line.
    assert read_metrics_jsonl(str(tmp_path / "metrics.jsonl")) == [{"step": 3, "loss": 0.5}]
    writer.close()
    writer.close()  # idempotent


def test_disabled_writer_is_a_no_op(tmp_path):
    workdir = tmp_path / "process1"
    with MetricWriter(str(workdir), enabled=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
        writer.write_text(1, "note", "hello")
        writer.write_hparams({"lr": 0.1})
        writer.flush()
    assert not workdir.exists()


def test_write_text_and_hparams(tmp_path):
    with MetricWriter(str(tmp_path)) as writer:
        writer.write_text(5, "config", "**lr** = 0.1")
        writer.write_hparams({"optimizer": {"lr": 0.1}, "seed": 0})
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    [event] = accumulator.Tensors("config")
    assert event.step == 5 and event.tensor_proto.string_val == [b"**lr** = 0.1"]
    assert json.loads((tmp_path / "text.jsonl").read_text()) == {"step": 5, "tag": "config", "text": "**lr** = 0.1"}
    assert json.loads((tmp_path / "hparams.json").read_text())["optimizer"] == {"lr": 0.1}


def test_invalid_scalars_are_rejected(tmp_path):
    with MetricWriter(str(tmp_path)) as writer:
        with pytest.raises(ValueError, match="reserved"):
            writer.write_scalars(1, {"step": 3})
        with pytest.raises(ValueError, match="shape"):
            writer.write_scalars(1, {"loss": np.zeros(3)})
        with pytest.raises(TypeError):
            writer.write_scalars(1, {"name": "abc"})


def test_truncated_last_line_is_skipped_and_resume_starts_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')  # crash mid-write
    with pytest.warns(UserWarning, match="last line 3"):
        assert [r["step"] for r in read_metrics_jsonl(str(path))] == [1, 2]
    with MetricWriter(str(tmp_path)) as writer:  # the resumed run appends
        writer.write_scalars(3, {"loss": 0.8})
    with pytest.warns(UserWarning, match="line 3"):
        records = read_metrics_jsonl(str(path))
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["loss"] == 0.8


def test_finite_guard_names_the_step_and_every_non_finite_term():
    fetched = []

    def fetch(metrics):  # stands in for jax.device_get: one call per check, returns host values
        fetched.append(metrics)
        return {k: np.asarray(v) for k, v in metrics.items()}

    guard = finite_guard.FiniteGuard(last_good_step=10, fetch=fetch)
    host = guard.check(11, {"loss": np.float32(0.5), "grad_norm": np.float32(2.0), "count": np.int32(3)})
    assert float(host["loss"]) == 0.5 and guard.last_good_step == 11 and len(fetched) == 1
    with pytest.raises(FloatingPointError) as info:
        guard.check(
            12,
            {
                "loss": np.float32(np.nan),
                "loss_kd": np.float32(1.0),
                "grad_norm": np.float32(np.inf),
                "fpg/grad_norm": np.float32(-np.inf),
            },
        )
    message = str(info.value)
    assert message.startswith("non-finite training metrics at step 12: ")
    assert "loss=nan" in message and "grad_norm=inf" in message and "fpg/grad_norm=-inf" in message
    assert "loss_kd" not in message and "(last finite step 11)" in message
    assert guard.last_good_step == 11  # a failed check does not advance it


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_meter_excludes_the_first_call_and_computes_eta():
    clock = FakeClock()
    meter = ProgressMeter(total_steps=3200, clock=clock)
    first = meter.update(20)  # includes compilation: only sets the reference point
    assert first["steps_per_sec"] is None and first["eta_seconds"] is None
    assert meter.format(20) == "step 20/3200 (0.6%) | -- steps/s | ETA --"

    clock.now += 25.0  # 100 steps in 25 s
    stats = meter.update(120)
    assert stats["steps_per_sec"] == pytest.approx(4.0)
    assert stats["eta_seconds"] == pytest.approx(3080 / 4.0)  # 770 s
    assert meter.format(120) == "step 120/3200 (3.8%) | 4.00 steps/s | ETA 12m50s"

    clock.now += 50.0  # next 100 steps slower (an eval in between): 2 steps/s recent, 200/75 average
    stats = meter.update(220)
    assert stats["steps_per_sec"] == pytest.approx(2.0)
    assert stats["avg_steps_per_sec"] == pytest.approx(200 / 75)
    assert stats["eta_seconds"] == pytest.approx(2980 / (200 / 75))
    assert stats["elapsed_seconds"] == pytest.approx(75.0)

    clock.now += 10.0
    assert meter.update(100)["steps_per_sec"] is None  # step went backwards: restarted, new reference


def test_progress_meter_resume_and_format_updates():
    clock = FakeClock()
    meter = ProgressMeter(total_steps=10_000, start_step=5000, clock=clock)
    meter.update(5000)
    clock.now += 100.0
    text = meter.format(5421)  # a new step: format updates the meter itself
    assert text == "step 5421/10000 (54.2%) | 4.21 steps/s | ETA 18m08s"
    assert meter.update(5421)["steps_this_run"] == 421


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "--"),
        (float("nan"), "--"),
        (0, "0s"),
        (45.4, "45s"),
        (730, "12m10s"),
        (3725, "1h02m05s"),
        (2 * 86400 + 4 * 3600, "2d04h"),
    ],
)
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert os.path.getsize(path) > 5000


def test_plots_write_png_files(tmp_path):
    rng = np.random.default_rng(0)
    with MetricWriter(str(tmp_path)) as writer:
        for step in range(0, 400, 20):
            writer.write_scalars(
                step,
                {
                    "train/loss": 2.0 * np.exp(-step / 150) + 0.1,
                    "train/ce_loss": 1.5 * np.exp(-step / 120) + 0.05,
                    "train/kd_loss": 0.5 * np.exp(-step / 300) + 0.02,
                    "train/lr": 0.1,
                },
            )
            if step % 100 == 0:
                writer.write_scalars(
                    step,
                    {
                        "val/bacc": 0.3 + step / 1000,
                        "val/macro_f1": 0.25 + step / 1100,
                        "val/tail_recall": 0.1 + step / 900,
                    },
                )
        writer.write_scalars(400, {"train/loss": float("nan")})  # a diverged last point is skipped
    curves = plots.plot_training_curves(str(tmp_path / "metrics.jsonl"), str(tmp_path / "fig" / "curves.png"))
    assert_png(curves)

    names = ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]
    labels = np.repeat(np.arange(8), 100)
    preds = np.where(rng.random(800) < np.linspace(0.95, 0.3, 8)[labels], labels, rng.integers(0, 3, 800))
    confusion = np.zeros((8, 8), int)
    np.add.at(confusion, (labels, preds), 1)
    assert_png(plots.plot_confusion_matrix(confusion, names, str(tmp_path / "confusion.png")))
    assert_png(plots.plot_confusion_matrix(confusion, names, str(tmp_path / "confusion_counts.png"), normalize=False))

    recall = {name: float(confusion[i, i] / confusion[i].sum()) for i, name in enumerate(names)}
    recall["DF"] = None  # no eval examples: drawn as n/a
    train_counts = [12725, 4372, 2180, 897, 369, 152, 62, 25]
    assert_png(plots.plot_per_class_recall(recall, train_counts, str(tmp_path / "recall.png")))
    assert_png(plots.plot_per_class_recall(recall, dict(zip(names, train_counts)), str(tmp_path / "recall2.png")))


def test_training_curves_with_missing_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "train/lr": 0.1}\n')
    assert_png(plots.plot_training_curves(str(path), str(tmp_path / "empty.png")))


def test_method_comparison_plot(tmp_path):
    scores = {
        "ce": {"bacc": 0.52, "macro_f1": 0.47, "mcc": 0.41, "tail_recall": None},
        "ekd": {"bacc": 0.61, "macro_f1": 0.55, "mcc": 0.50, "tail_recall": 0.33},
        "fopro": {"bacc": 0.64, "macro_f1": 0.58, "mcc": float("nan"), "tail_recall": 0.41},
    }
    assert_png(plots.plot_method_comparison(scores, str(tmp_path / "comparison.png")))
    assert_png(plots.plot_method_comparison({}, str(tmp_path / "nothing.png")))
