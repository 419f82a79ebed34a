"""Deployment exports (foprokd_jax/deploy.py, launch/export.py): StableHLO and ONNX of every student backbone.

Students are random (torch-style init, randomised BatchNorm running statistics so inference mode matters),
32 px, 5 classes. ONNX is checked with onnxruntime against JAX on a fixed uint8 batch (max |prob diff|
<= 1e-4); StableHLO is reloaded and run by a Python process that imports only jax and numpy.
"""

import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import isic
from foprokd_jax import deploy, evaluation, export, train
from foprokd_jax.cli import predict
from foprokd_jax.data import synthetic
from foprokd_jax.models import students
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.porting import artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, CLASSES = 32, ["akiec", "bcc", "bkl", "df", "mel"]
IMAGES = np.random.RandomState(0).randint(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)


def _student_artifact(tmp_path, arch, classifier="linear"):
    """A random student of `arch` with EKD heads, written like launch/predict.py --export writes one."""
    student = EKDStudent(num_classes=len(CLASSES), teacher_dim=16, trunk=arch, classifier=classifier)
    variables = jax.jit(lambda k: student.init(k, jnp.zeros((1, SIZE, SIZE, 3)), train=False))(jax.random.key(1))
    rng = np.random.RandomState(2)
    stats = jax.tree.map(
        lambda v: np.asarray(v) + rng.uniform(0.0, 0.5, v.shape).astype(np.float32),
        jax.device_get(variables.get("batch_stats", {})),
    )
    variables = {"params": jax.device_get(variables["params"]), **({"batch_stats": stats} if stats else {})}
    meta = {
        "arch": "student:EKDStudent",
        "kind": export.KIND,
        "module": export.module_description(student),
        "logits_key": "z1",
        "class_names": CLASSES,
        "image_size": SIZE,
        "input": export.INPUT_DESCRIPTION,
        "method": "ekd",
        "dataset": "synthetic",
        "checkpoint_step": 7,
        "source": "test",
    }
    path = str(tmp_path / f"{arch}.npz")
    return path, artifact.save_artifact(path, variables, meta)


def _jax_probs(path, images):
    module, variables, _ = export.load_student_with_meta(path)
    return np.asarray(deploy.probabilities_fn(module, variables)(images))


STABLEHLO_RUNNER = """
import sys, numpy as np, jax
exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
images = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([np.asarray(exported.call(images[:1])), np.asarray(exported.call(images))]))
assert not any(name.startswith('foprokd_jax') for name in sys.modules), 'model code was imported'
"""


@pytest.mark.parametrize("arch", students.ARCHS)
def test_onnx_and_stablehlo_match_jax_for_every_student(tmp_path, arch):
    # The ViT case uses LDAM's cosine classifier, so the twin's cosine head is checked too.
    classifier = "cosine" if arch == "vit_tiny_patch16" else "linear"
    student_path, student_meta = _student_artifact(tmp_path, arch, classifier)
    reference = _jax_probs(student_path, IMAGES)
    assert np.allclose(reference.sum(1), 1.0, atol=1e-5)

    onnx_path = str(tmp_path / "student.onnx")
    sidecar = deploy.export_from_artifact(onnx_path, "onnx", student_path)
    session, _ = deploy.onnx_session(onnx_path)
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("images", "tensor(uint8)", ["batch", SIZE, SIZE, 3])
    ]
    onnx_error = np.abs(deploy.onnx_probs(session, IMAGES) - reference).max()
    assert onnx_error <= 1e-4, onnx_error
    assert np.abs(deploy.onnx_probs(session, IMAGES[:1]) - reference[:1]).max() <= 1e-4  # any batch size
    custom = session.get_modelmeta().custom_metadata_map
    assert json.loads(custom["class_names"]) == CLASSES and custom["image_size"] == str(SIZE)
    assert json.loads(custom["mean"]) == [0.485, 0.456, 0.406] and json.loads(custom["std"]) == [0.229, 0.224, 0.225]
    assert json.loads(custom["foprokd_jax"])["student_arch"] == arch == sidecar["student_arch"]
    assert sidecar["student_artifact_sha256"] == student_meta["sha256"]

    # StableHLO reloaded from its bytes (shape-polymorphic batch; the model-code-free process is checked once,
    # in the sidecar test below, to keep this per-architecture test short).
    hlo_path = str(tmp_path / "student.stablehlo")
    deploy.export_from_artifact(hlo_path, "stablehlo", student_path)
    call, _ = deploy.load_stablehlo(hlo_path)
    hlo_error = np.abs(np.asarray(call(IMAGES)) - reference).max()
    assert hlo_error <= 1e-6, hlo_error
    print(f"{arch} ({classifier} head): ONNX Runtime max |dp| {onnx_error:.2e}, StableHLO max |dp| {hlo_error:.2e}")


def test_onnx_refuses_a_custom_resnet_trunk(tmp_path):
    student = EKDStudent(num_classes=3, teacher_dim=None, trunk="resnet18", stage_sizes=(1, 1, 1, 1), width=8)
    module = export.InferenceStudent(student, "z1")
    with pytest.raises(ValueError, match="torchvision resnet18 trunk"):  # refused before any weight is read
        deploy.onnx_model(module, {}, SIZE, {})


def test_sidecars_hold_preprocessing_classes_and_sha256_and_tampering_is_refused(tmp_path):
    student_path, _ = _student_artifact(tmp_path, "resnet18")
    out = str(tmp_path / "r18.stablehlo")
    deploy.export_from_artifact(out, "stablehlo", student_path)
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(out + ".sha256") as f:
        assert f.read() == f"{digest}  r18.stablehlo\n"  # sha256sum -c format
    with open(out + ".json") as f:
        sidecar = json.load(f)
    assert sidecar["sha256"] == digest and sidecar["class_names"] == CLASSES
    assert sidecar["input"]["shape"] == ["batch", SIZE, SIZE, 3] and sidecar["input"]["dtype"] == "uint8"
    assert sidecar["normalisation"]["inside_graph"] and sidecar["checkpoint_step"] == 7
    reference = _jax_probs(student_path, IMAGES)
    call, _ = deploy.load_stablehlo(out)
    np.testing.assert_allclose(np.asarray(call(IMAGES)), reference, atol=1e-6)
    # Plain JAX runs the file without this package, at batch 1 and 3.
    np.save(tmp_path / "images.npy", IMAGES)
    result = subprocess.run(
        [sys.executable, "-c", STABLEHLO_RUNNER, out, str(tmp_path / "images.npy"), str(tmp_path / "probs.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), np.concatenate([reference[:1], reference]), atol=1e-6)
    with open(out, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    with pytest.raises(ValueError, match="sha256"):
        deploy.load_stablehlo(out)


def _error_lines(result):
    """The `error:` lines of a failed CLI run (absl's INFO logging may precede them), checked to be one."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "export.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--format=tflite", "--artifact=a.npz", "--out=x"], "unknown export format 'tflite'"),
        (["--format=onnx", "--workdir=nope", "--out=x.onnx"], "workdir nope does not exist"),
        (["--format=onnx", "--workdir=empty_run", "--out=x.onnx"], "empty_run/config.json not found"),
        (["--format=onnx", "--artifact=missing.npz", "--out=x.onnx"], "missing.npz not found"),
        (["--format=onnx", "--out=x.onnx"], "exactly one of --workdir and --artifact"),
    ],
)
def test_bad_export_requests_get_one_error_line(tmp_path, args, expected):
    (tmp_path / "empty_run").mkdir()
    assert expected in _error_lines(_cli(*args, cwd=str(tmp_path)))
    assert sorted(os.listdir(tmp_path)) == ["empty_run"]  # nothing written


def test_cli_exports_a_trained_run(tmp_path):
    """A 2-step bsm run of a ResNet-18 student at 32 px -> launch/export.py --workdir -> same probabilities."""
    root = str(tmp_path / "isic")
    synthetic.write_synthetic_isic(
        root, n_max=12, val_per_class=1, test_per_class=1, image_sizes=((32, 32),), folds=(1,), imbs=("0.01",), seed=0
    )
    config = isic.get_config("method=bsm,runlocal")
    config.unlock()
    config.input.image_root, config.input.split_dir = root, os.path.join(root, "splits")
    config.input.prepared_dir = os.path.join(root, "tfds")
    config.total_steps, config.eval_every_steps = 2, 2
    # runlocal's tiny custom trunk has no torchvision twin: ONNX exports the published ResNet-18 layout.
    config.student.width, config.student.stage_sizes = 64, (2, 2, 2, 2)
    config.lock()
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    missing = _cli(
        f"--workdir={workdir}", "--checkpoint=999", "--format=onnx", "--out=out/student.onnx", cwd=str(tmp_path)
    )
    assert "999" in _error_lines(missing) and not (tmp_path / "out").exists()
    result = _cli(
        f"--workdir={workdir}", "--checkpoint=latest", "--format=onnx", "--out=out/student.onnx", cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "onnx student (resnet18, 8 classes, 32 px)" in result.stdout
    session, sidecar = deploy.onnx_session(str(tmp_path / "out" / "student.onnx"))
    run = evaluation.restore_run(workdir, "latest")
    images = np.random.RandomState(3).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(deploy.onnx_probs(session, images), predict.probs_from_run(run, images), atol=1e-4)
    assert sidecar["class_names"] == list(run.dataset.class_names) and sidecar["method"] == "bsm"
