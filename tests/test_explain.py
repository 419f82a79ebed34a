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
SIZE = 128            # layer4: 4 x 4, layer3: 8 x 8
# Stated tolerance of the parity: maps lie in [0, 1]; float32 forward/backward in two frameworks and two
# bilinear resizers (cv2 vs jax.image.resize) agree far below it (measured: see docs/evaluation.md).
MAP_ATOL = 1e-4


def _random_student_variables(seed=0):
    """An EKD student (ResNet-18 trunk, fc, p_free, fc_free) with every variable random, BN statistics included."""
    student = EKDStudent(num_classes=NUM_CLASSES, teacher_dim=16)
    variables = flax.core.unfreeze(student.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
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
    expected = {"params": {**variables["params"]["trunk"], "fc": variables["params"]["fc"]},
                "batch_stats": variables["batch_stats"]["trunk"]}
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
        np.testing.assert_allclose(grads["gradients"], np.broadcast_to(expected, grads["gradients"].shape),
                                   rtol=1e-5, atol=1e-9)
    print(f"stage {stage}: max |JAX - grad-cam| = {worst} (JAX maps in {jax_seconds:.2f} s incl. compile)")


def test_gradcam_input_checks_and_overlay(student_and_torch):
    student, variables, _, _, images = student_and_torch
    with pytest.raises(ValueError, match="no module at path 'trunk/layer9_0'"):
        explain.activations_and_gradients(student, variables, images, ("trunk", "layer9_0"), logits_key="z1",
                                          train=False)
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
