"""Hinton-KD (`foprokd_jax/methods/hinton_kd/`), the worked example of docs/adding_a_method.md: its loss against a
numpy computation, 1 = 8 devices, and a run through the CLI with a teacher exported by the real export path."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common, isic
from foprokd_jax import evaluation, export, losses, parallel, train
from foprokd_jax.methods import student_step
from foprokd_jax.methods.hinton_kd import method as hinton_method
from foprokd_jax.methods.hinton_kd.objective import hinton_objective
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.state import create_train_state
from tests import cli_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 8
COUNTS = np.array([400, 150, 90, 60, 25, 12, 5, 3])


def _numpy_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature,alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0), (0.5, 1.0)])
def test_loss_matches_a_numpy_computation(temperature, alpha):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, NUM_CLASSES)).astype(np.float32) * 3
    t = rng.normal(size=(16, NUM_CLASSES)).astype(np.float32) * 3
    y = rng.integers(0, NUM_CLASSES, 16).astype(np.int32)
    loss, terms = hinton_objective(
        {"z1": jnp.asarray(z)},
        jnp.asarray(y),
        jnp.asarray(t),
        losses.make_classification_loss("ce", COUNTS),
        temperature,
        alpha,
        step=None,
    )
    z64, t64 = z.astype(np.float64), t.astype(np.float64)
    ce = -_numpy_log_softmax(z64)[np.arange(16), y].mean()
    log_p_t, log_p_s = _numpy_log_softmax(t64 / temperature), _numpy_log_softmax(z64 / temperature)
    kl = (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1).mean()
    np.testing.assert_allclose(float(terms["loss_cls"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss_soft"]), temperature**2 * kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss), (1 - alpha) * ce + alpha * temperature**2 * kl, rtol=1e-5)


def test_soft_term_vanishes_when_student_equals_teacher():
    z = jnp.asarray(np.random.default_rng(1).normal(size=(4, NUM_CLASSES)), jnp.float32)
    _, terms = hinton_objective(
        {"z1": z}, jnp.zeros(4, jnp.int32), z, losses.make_classification_loss("ce", COUNTS), 4.0, 0.9, step=None
    )
    assert abs(float(terms["loss_soft"])) < 1e-6


def _run_steps(num_devices, batches, student, student_vars, teacher, teacher_vars):
    mesh = parallel.make_mesh(num_devices)
    sgd = optax.sgd(0.05, momentum=0.9)  # linear in the gradient: equal parameters mean equal gradients
    cls_loss = losses.make_classification_loss("bsm", COUNTS)

    def targets(frozen, x):
        return student_step.teacher_outputs(teacher, frozen, x, "z1")

    def objective(out, labels, teacher_logits, step):
        return hinton_objective(out, labels, teacher_logits, cls_loss, 4.0, 0.9, step)

    step = student_step.make_student_train_step(
        student=student, optimizer=sgd, objective=objective, targets_fn=targets, mesh=mesh, donate=False
    )
    state = parallel.replicate(create_train_state(student_vars, sgd), mesh)
    frozen = parallel.replicate(teacher_vars, mesh)
    history = []
    for batch in batches:
        state, metrics = step(state, frozen, parallel.host_batch_to_global(batch, mesh))
        history.append(parallel.to_host(metrics))
    return jax.device_get(state), history


def test_one_and_eight_devices_agree():
    size = 32
    student = EKDStudent(
        num_classes=NUM_CLASSES, teacher_dim=None, stage_sizes=(1, 1, 1, 1), width=8, bn_axis_name=parallel.DATA_AXIS
    )
    teacher = EKDStudent(num_classes=NUM_CLASSES, teacher_dim=None, stage_sizes=(1, 1, 1, 1), width=4)
    dummy = jnp.zeros((1, size, size, 3))
    student_vars = student.init(jax.random.PRNGKey(0), dummy, train=False)
    teacher_vars = teacher.init(jax.random.PRNGKey(1), dummy, train=False)
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, (16,)).astype(np.int32),
        }
        for _ in range(3)
    ]
    one, h1 = _run_steps(1, batches, student, student_vars, teacher, teacher_vars)
    eight, h8 = _run_steps(8, batches, student, student_vars, teacher, teacher_vars)
    for a, b in zip(h1, h8):
        for key in ("loss", "loss_cls", "loss_soft"):
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), one.params, eight.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), one.batch_stats, eight.batch_stats
    )
    assert h1[-1]["loss_soft"] > 0


def test_teacher_must_match_the_runs_classes_and_size(tmp_path):
    teacher = EKDStudent(num_classes=3, teacher_dim=None, stage_sizes=(1, 1, 1, 1), width=4)
    variables = jax.device_get(teacher.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False))
    run = types.SimpleNamespace(
        parts=types.SimpleNamespace(export_student=export.StudentSpec(teacher, lambda s: s, "z1")),
        state=variables,
        config=common.method_config("bsm"),
        dataset=types.SimpleNamespace(class_names=("a", "b", "c"), name="toy"),
        step=0,
        workdir=str(tmp_path),
    )
    run.config.input.image_size = 16
    path = str(tmp_path / "teacher.npz")
    export.export_student(path, run)
    config = common.method_config("hinton_kd")
    config.hinton_kd.teacher_artifact = path
    config.input.image_size = 16
    network, _, record = hinton_method.load_teacher(
        config, types.SimpleNamespace(class_names=("a", "b", "c"), name="toy")
    )
    assert record["logits_key"] == "z1" and network.num_classes == 3
    with pytest.raises(ValueError, match="trained on classes"):
        hinton_method.load_teacher(config, types.SimpleNamespace(class_names=("a", "b", "x"), name="toy"))
    config.input.image_size = 32
    with pytest.raises(ValueError, match="takes 16 px images"):
        hinton_method.load_teacher(config, types.SimpleNamespace(class_names=("a", "b", "c"), name="toy"))


def test_trains_through_the_cli_from_an_exported_teacher(tmp_path_factory, tmp_path):
    root = cli_runs.write_tiny_isic(str(tmp_path_factory.mktemp("isic_hinton")))
    data = dict(image_root=root, split_dir=f"{root}/splits", prepared_dir=f"{root}/tfds")
    # The teacher: a BSM run on the same data, exported as launch/predict.py --export does.
    teacher_config = isic.get_config("method=bsm,runlocal")
    teacher_config.input.update(data)
    teacher_config.total_steps, teacher_config.num_devices = 2, 1
    train.train_and_evaluate(teacher_config, str(tmp_path / "teacher_run"))
    artifact = str(tmp_path / "teacher_student.npz")
    export.export_student(artifact, evaluation.restore_run(str(tmp_path / "teacher_run")))

    env = cli_runs.cli_env(tmp_path_factory, devices=2)
    workdir = str(tmp_path / "hinton")
    args = [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        "--config=configs/isic.py:method=hinton_kd,runlocal",
        f"--config.hinton_kd.teacher_artifact={artifact}",
        f"--workdir={workdir}",
    ]
    args += [f"--config.input.{key}={value}" for key, value in data.items()]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    assert results["method"] == "hinton_kd" and 0.0 <= results["report"]["bacc"] <= 1.0
    assert results["method_info"]["hinton_teacher"]["sha256"] == export.load_student_with_meta(artifact)[2]["sha256"]
    assert "hinton_kd" in config and not {"teacher", "fpg", "crckd"} & set(config)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("train/loss_soft" in rec for rec in records)
    # A teacher file that is not there: one error line, exit 1.
    bad = subprocess.run(
        args[:3]
        + [f"--config.hinton_kd.teacher_artifact={tmp_path}/missing.npz", f"--workdir={tmp_path}/bad"]
        + args[5:],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "missing.npz" in bad.stderr.strip().splitlines()[-1] and not os.path.exists(f"{tmp_path}/bad")
