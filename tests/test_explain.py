"""Grad-CAM / Grad-CAM++ in JAX (foprokd_jax/explain.py) against the `grad-cam` package (pytorch_grad_cam) on the
same random weights converted to torchvision, and the Flax -> torchvision converter it relies on."""

import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from foprokd_jax import explain
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.porting import resnet_weights
from foprokd_jax.porting.torch_compat import import_torchvision

NUM_CLASSES = 5
SIZE = 128  # layer4: 4 x 4, layer3: 8 x 8
# Stated tolerance of the parity: maps lie in [0, 1]; float32 forward/backward in two frameworks and two
# bilinear resizers (cv2 vs jax.image.resize) agree far below it (measured: see docs/evaluation.md).
MAP_ATOL = 1e-4


def _random_student_variables(seed=0):
    """An EKD student (ResNet-18 trunk, fc, p_free, fc_free) with every variable random, BN statistics included."""
    student = EKDStudent(num_classes=NUM_CLASSES, teacher_dim=16)
    init = jax.jit(lambda key: student.init(key, jnp.zeros((1, SIZE, SIZE, 3)), train=False))  # jit: seconds less
    variables = flax.core.unfreeze(init(jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(variables)
    for path, value in flat.items():
        if path[-1] in ("scale", "var"):
            flat[path] = jnp.asarray(rng.uniform(0.5, 1.5, value.shape), jnp.float32)
        elif path[-1] in ("bias", "mean"):
            flat[path] = jnp.asarray(rng.normal(0, 0.1, value.shape), jnp.float32)
    return student, flax.traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def student_and_torch():
    student, variables = _random_student_variables()
    torchvision = import_torchvision()
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    state_dict = resnet_weights.ekd_student_to_torchvision(variables)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    model.eval()
    images = np.random.default_rng(1).normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)
    return student, variables, model, state_dict, images


def test_flax_to_torchvision_roundtrip_and_forward_parity(student_and_torch):
    student, variables, model, state_dict, images = student_and_torch
    assert not any(k.startswith(("p_free", "fc_free")) for k in state_dict)
    assert state_dict["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
    back = resnet_weights.torchvision_resnet_to_flax(state_dict, "resnet18", include_fc=True)
    expected = {
        "params": {**variables["params"]["trunk"], "fc": variables["params"]["fc"]},
        "batch_stats": variables["batch_stats"]["trunk"],
    }
    flat_back, flat_expected = (flax.traverse_util.flatten_dict(t) for t in (back, expected))
    assert set(flat_back) == set(flat_expected)
    for key, value in flat_expected.items():
        np.testing.assert_array_equal(flat_back[key], np.asarray(value), err_msg=str(key))
    z1 = np.asarray(student.apply(variables, images, train=False)["z1"])
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(z1, torch_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not a models/resnet.py ResNet"):
        resnet_weights.flax_resnet_to_torchvision({"params": {"p_free": {"linear1": {"kernel": np.zeros((2, 2))}}}})
    cosine = {"params": {"trunk": {}, "fc": {"kernel": np.zeros((512, 5))}}}
    with pytest.raises(ValueError, match="cosine"):
        resnet_weights.ekd_student_to_torchvision(cosine)


@pytest.mark.parametrize("stage", [4, 3])
def test_gradcam_and_gradcam_pp_match_the_grad_cam_package(student_and_torch, stage):
    """Stage 4 (the default, the student's last convolutional stage) and stage 3, whose gradients vary in space
    (behind layer4 they do not: GAP + fc makes d z / d A constant over positions)."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    student, variables, model, _, images = student_and_torch
    path = ("trunk", f"layer{stage}_1")
    if stage == 4:
        assert explain.last_stage_path(student, variables, images, train=False) == path
    targets = np.array([2, -1, 0])  # -1: the predicted class
    start = time.perf_counter()
    ours = explain.class_activation_maps(student, variables, images, path, targets, logits_key="z1", train=False)
    jax_seconds = time.perf_counter() - start
    predicted = int(np.argmax(ours["logits"][1]))
    np.testing.assert_array_equal(ours["classes"], [2, predicted, 0])
    layer = getattr(model, f"layer{stage}")[-1]
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2))
    torch_targets = [ClassifierOutputTarget(int(c)) for c in ours["classes"]]
    worst = {}
    for method, cam_class in (("gradcam", GradCAM), ("gradcam_pp", GradCAMPlusPlus)):
        with cam_class(model=model, target_layers=[layer]) as cam:
            reference = cam(input_tensor=nchw, targets=torch_targets)
            torch_activations = cam.activations_and_grads.activations[0].numpy().transpose(0, 2, 3, 1)
            torch_gradients = cam.activations_and_grads.gradients[0].numpy().transpose(0, 2, 3, 1)
        assert reference.shape == ours[method].shape == (3, SIZE, SIZE)
        worst[method] = float(np.max(np.abs(ours[method] - reference)))
        np.testing.assert_allclose(ours[method], reference, rtol=0, atol=MAP_ATOL, err_msg=method)
    # The JAX gradients themselves equal torch's autograd ones at the target layer.
    grads = explain.activations_and_gradients(student, variables, images, path, ours["classes"], "z1", train=False)
    np.testing.assert_allclose(grads["activations"], torch_activations, rtol=1e-4, atol=1e-4)
    scale = np.abs(torch_gradients).max()
    np.testing.assert_allclose(grads["gradients"], torch_gradients, rtol=0, atol=1e-4 * scale)
    if stage == 4:  # GAP + linear head: the gradient is fc.weight[c] / (h w) at every position
        kernel = np.asarray(variables["params"]["fc"]["kernel"])
        expected = kernel[:, ours["classes"]].T[:, None, None, :] / (4 * 4)
        np.testing.assert_allclose(
            grads["gradients"], np.broadcast_to(expected, grads["gradients"].shape), rtol=1e-5, atol=1e-9
        )
    print(f"stage {stage}: max |JAX - grad-cam| = {worst} (JAX maps in {jax_seconds:.2f} s incl. compile)")


def test_gradcam_input_checks_and_overlay(student_and_torch):
    student, variables, _, _, images = student_and_torch
    with pytest.raises(ValueError, match="no module at path 'trunk/layer9_0'"):
        explain.activations_and_gradients(
            student, variables, images, ("trunk", "layer9_0"), logits_key="z1", train=False
        )
    with pytest.raises(ValueError, match="target_classes must have shape"):
        explain.activations_and_gradients(student, variables, images, ("trunk", "layer4_1"), [0], "z1", train=False)
    heat = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    image = np.full((4, 4, 3), 128, np.uint8)
    out = explain.overlay(image, heat, image_weight=0.5)
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3) and out.max() == 255
    jet = explain.jet_colormap(heat)
    mixed = 0.5 * jet + 0.5 * (128 / 255)
    np.testing.assert_allclose(out, np.uint8(255 * mixed / mixed.max()), atol=1)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 1, 0, 0, 1])
    np.testing.assert_array_equal(explain.worst_classified(probs, labels, 2), [3, 2, 4, 1])


# ---- launch/explain.py on an exported student (the artifact format of export.py), tiny trunk ----


def _tiny_artifact(path):
    from foprokd_jax import export
    from foprokd_jax.porting import artifact

    student = EKDStudent(num_classes=3, teacher_dim=None, stage_sizes=(1, 1), width=8)
    variables = student.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False)
    variables = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
    meta = {
        "arch": "student:EKDStudent",
        "kind": export.KIND,
        "module": export.module_description(student),
        "logits_key": "z1",
        "class_names": ["NV", "MEL", "DF"],
        "image_size": 32,
        "checkpoint_step": 7,
    }
    artifact.save_artifact(path, variables, meta)
    return student, variables


def test_explain_cli_on_an_exported_student(tmp_path):
    import csv
    import os
    import subprocess
    import sys

    from PIL import Image

    from foprokd_jax import export

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    artifact_path = str(tmp_path / "student.npz")
    _tiny_artifact(artifact_path)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b", "a", "c"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    env = dict(
        os.environ,
        PYTHONPATH=root,
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES="1",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    cli = [sys.executable, os.path.join(root, "launch", "explain.py"), f"--artifact={artifact_path}"]
    out_dir = tmp_path / "cams"
    r = subprocess.run(
        cli + [f"--images={folder}", f"--out_dir={out_dir}", "--batch_size=2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 images explained at trunk/layer2_0" in r.stdout
    with open(out_dir / "explanations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["image_id"] for row in rows] == ["a", "b", "c"]
    # The maps equal an in-process computation on the exported module (uint8 in, logits out).
    module, variables, _ = export.load_student_with_meta(artifact_path)
    images = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in ("a", "b", "c")])
    expected = explain.class_activation_maps(module, variables, images)
    assert expected["target_path"] == ("trunk", "layer2_0")
    saved = np.load(out_dir / "maps.npz")
    for method in explain.METHODS:
        np.testing.assert_allclose(saved[method], expected[method], atol=1e-5)
    assert [int(row["target"]) for row in rows] == expected["classes"].tolist()
    assert [row["target"] for row in rows] == [row["prediction"] for row in rows]
    for row in rows:
        with open(out_dir / row["png"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # TensorBoard: an event file, and the PNG copies of its images, tagged per method at the checkpoint's step.
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out_dir / "tb"))
    copies = sorted(os.listdir(out_dir / "images"))
    assert len(copies) == 6 and "gradcam_pp_000_a_7.png" in copies and "gradcam_000_a_7.png" in copies

    # Bad inputs: one error line, nothing written.
    for extra, needle in (
        (["--target=label", f"--images={folder}"], "--target=label needs labelled images"),
        ([f"--images={folder}", "--layer=trunk/nope"], "no module at path 'trunk/nope'"),
        ([f"--images={folder}", "--worst_per_class=2"], "exactly one of --images and --worst"),
        ([f"--images={folder}", "--image_weight=2"], "--image_weight must lie in [0, 1]"),
    ):
        bad = subprocess.run(
            cli + extra + [f"--out_dir={tmp_path / 'bad'}"],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            timeout=300,
        )
        errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
        assert bad.returncode == 1 and len(errors) == 1 and needle in errors[0], bad.stderr[-2000:]
        assert not os.path.exists(tmp_path / "bad")
