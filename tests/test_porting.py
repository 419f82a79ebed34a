"""Porting tests: torchvision / MoCo-v2 checkpoints -> Flax artifact -> same features as torch.

No real weights can be downloaded here, so checkpoints are random-init torchvision models saved in
the real on-disk layouts (a MoCo-v2 ``.pth.tar`` dict and a plain torchvision state dict), with BN
running statistics and affine parameters set to non-trivial values so that a wrong BN mapping shows.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from foprokd_jax.cli import convert_teacher
from foprokd_jax.models.resnet import get_resnet
from foprokd_jax.porting import artifact, resnet_weights
from foprokd_jax.porting.artifact import load_artifact, save_artifact, sha256_file
from foprokd_jax.porting.torch_compat import import_torchvision
from tests.parity_report import parity_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torchvision = import_torchvision()


class NotATensor:
    """Any custom class: unpickling it needs code execution, which weights_only loading refuses."""

    def __init__(self):
        self.payload = "would run arbitrary code on load"


def _randomise_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Give every BN non-trivial affine parameters and running statistics (defaults are 1/0/0/1)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(1234)
    return model


def _torch_resnet(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    return _randomise_batchnorm(model, torch.Generator().manual_seed(seed + 1)).eval()


def _flax_features(arch, variables, images_nchw, num_classes=None):
    model = get_resnet(arch, num_classes=num_classes)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return apply(variables, jnp.asarray(np.transpose(images_nchw, (0, 2, 3, 1))))


def _torch_features(model, images_nchw, with_logits=False):
    with torch.inference_mode():
        x = torch.from_numpy(images_nchw)
        logits = model(x) if with_logits else None
        fc, model.fc = model.fc, torch.nn.Identity()
        try:
            features = model(x)
        finally:
            model.fc = fc
    return features.numpy(), (logits.numpy() if with_logits else None)


def _save_moco_v2_checkpoint(model: torch.nn.Module, path: str, seed: int = 7):
    """Write a checkpoint laid out like ``moco_v2_800ep_pretrain.pth.tar`` (Chen et al. 2020)."""
    generator = torch.Generator().manual_seed(seed)
    encoder = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    # MoCo-v2's projection MLP replaces fc: Linear(2048, 2048) -> ReLU -> Linear(2048, 128).
    encoder.update(
        {
            "fc.0.weight": torch.randn(2048, 2048, generator=generator) * 0.02,
            "fc.0.bias": torch.zeros(2048),
            "fc.2.weight": torch.randn(128, 2048, generator=generator) * 0.02,
            "fc.2.bias": torch.zeros(128),
        }
    )
    state_dict = {}
    for key, value in encoder.items():
        state_dict["module.encoder_q." + key] = value
        # The momentum encoder must differ, so that converting the wrong one would break parity.
        noise = (torch.randn(value.shape, generator=generator) * 0.1).to(value.dtype)
        state_dict["module.encoder_k." + key] = value + noise if value.is_floating_point() else value
    state_dict["module.queue"] = torch.randn(128, 4096, generator=generator)
    state_dict["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state_dict}, path)


def _images(batch, size, seed):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _assert_nothing_written(out):
    directory = os.path.dirname(out)
    assert not os.path.exists(out) and not os.path.exists(out + ".json")
    leftovers = [name for name in os.listdir(directory) if name.startswith("." + os.path.basename(out))]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def torch_resnet18():
    return _torch_resnet("resnet18", seed=0)


@pytest.fixture(scope="module")
def resnet18_numpy_state_dict(torch_resnet18):
    return {k: v.numpy().copy() for k, v in torch_resnet18.state_dict().items()}


def test_moco_v2_resnet50_parity(tmp_path):
    torch_model = _torch_resnet("resnet50", seed=1)
    src, out = str(tmp_path / "moco_v2_800ep_pretrain.pth.tar"), str(tmp_path / "moco_r50.npz")
    _save_moco_v2_checkpoint(torch_model, src)

    meta = convert_teacher.convert(src, out, arch="resnet50", fmt="auto")
    assert meta["source_format"] == "moco_v2" and meta["feature_dim"] == 2048
    assert meta["num_params"] == 23_508_032 and meta["num_classes"] is None
    assert meta["sha256"] == sha256_file(out) and meta["source_sha256"] == sha256_file(src)

    variables, loaded_meta = load_artifact(out, expected_arch="resnet50")
    assert loaded_meta == meta
    assert "fc" not in variables["params"]
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer3_5"]["bn3"]["var"], torch_model.layer3[5].bn3.running_var.numpy()
    )

    for batch, size, seed in ((2, 64, 0), (1, 224, 1)):
        images = _images(batch, size, seed)
        ours = _flax_features("resnet50", variables, images)["pre_logits"]
        reference, _ = _torch_features(torch_model, images)
        _, error_vs_scale = parity_report(f"MoCo-v2 R50 pre_logits {batch}x3x{size}x{size}", ours, reference)
        assert error_vs_scale < 1e-4


def test_torchvision_resnet18_parity_with_logits(tmp_path, torch_resnet18):
    src, out = str(tmp_path / "resnet18.pth"), str(tmp_path / "r18.npz")
    torch.save(torch_resnet18.state_dict(), src)
    meta = convert_teacher.convert(src, out, arch="resnet18")
    assert meta["source_format"] == "torchvision" and meta["num_classes"] == 1000
    assert meta["num_params"] == 11_689_512 and meta["feature_dim"] == 512

    variables, _ = load_artifact(out, expected_arch="resnet18")
    images = _images(2, 64, 2)
    ours = _flax_features("resnet18", variables, images, num_classes=1000)
    features, logits = _torch_features(torch_resnet18, images, with_logits=True)
    _, feature_error = parity_report("torchvision R18 pre_logits 2x3x64x64", ours["pre_logits"], features)
    _, logit_error = parity_report("torchvision R18 logits 2x3x64x64", ours["logits"], logits)
    assert feature_error < 1e-4 and logit_error < 1e-4


def test_wrapped_and_data_parallel_state_dicts_convert(tmp_path, torch_resnet18):
    wrapped = {"model": {"module." + k: v for k, v in torch_resnet18.state_dict().items()}, "epoch": 3}
    src, out = str(tmp_path / "wrapped.pth"), str(tmp_path / "wrapped.npz")
    torch.save(wrapped, src)
    meta = convert_teacher.convert(src, out, arch="resnet18", fmt="torchvision", include_fc=False)
    assert meta["num_params"] == 11_176_512 and meta["num_classes"] is None


def test_unsafe_pickle_is_refused_and_nothing_written(tmp_path, torch_resnet18):
    src, out = str(tmp_path / "evil.pth"), str(tmp_path / "out" / "teacher.npz")
    os.makedirs(os.path.dirname(out))
    torch.save({"state_dict": torch_resnet18.state_dict(), "extra": NotATensor()}, src)

    with pytest.raises(convert_teacher.CheckpointError) as info:
        convert_teacher.convert(src, out, arch="resnet18")
    message = str(info.value)
    assert "arbitrary" in message and "safety" in message and src in message
    _assert_nothing_written(out)

    # The CLI exits non-zero with the same message (and works from the repo root without install).
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "convert_teacher.py"),
            f"--src={src}",
            f"--out={out}",
            "--arch=resnet18",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "arbitrary" in result.stderr and src in result.stderr
    _assert_nothing_written(out)


def test_missing_source_file_is_a_clear_error(tmp_path):
    src, out = str(tmp_path / "nope.pth.tar"), str(tmp_path / "t.npz")
    with pytest.raises(FileNotFoundError, match="nope.pth.tar"):
        convert_teacher.convert(src, out, arch="resnet50")
    _assert_nothing_written(out)


def test_foreign_network_is_rejected_listing_keys(tmp_path):
    other = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8, 2)
    )
    src, out = str(tmp_path / "other.pth"), str(tmp_path / "t.npz")
    torch.save(other.state_dict(), src)
    with pytest.raises(ValueError) as info:
        convert_teacher.convert(src, out, arch="resnet50", fmt="torchvision")
    message = str(info.value)
    assert "unexpected checkpoint keys" in message and "0.weight" in message
    assert "missing from the checkpoint" in message and "params/conv1/kernel" in message
    _assert_nothing_written(out)

    with pytest.raises(ValueError, match="this is not a MoCo-v2 checkpoint"):
        convert_teacher.convert(src, out, arch="resnet50", fmt="moco_v2")
    _assert_nothing_written(out)


def test_missing_keys_and_shape_mismatches_are_listed(resnet18_numpy_state_dict):
    partial = dict(resnet18_numpy_state_dict)
    del partial["layer2.0.downsample.1.running_var"]
    partial["bogus.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        resnet_weights.torchvision_resnet_to_flax(partial, "resnet18")
    message = str(info.value)
    assert "batch_stats/layer2_0/downsample_bn/var" in message and "bogus.weight" in message

    with pytest.raises(ValueError, match="shape mismatches") as info:
        resnet_weights.torchvision_resnet_to_flax(resnet18_numpy_state_dict, "resnet50")
    assert "layer1.0.conv1.weight" in str(info.value)


def test_conversion_layouts_and_fc_handling(resnet18_numpy_state_dict):
    sd = resnet18_numpy_state_dict
    variables = resnet_weights.torchvision_resnet_to_flax(sd, "resnet18")
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(
        params["layer2_0"]["downsample_conv"]["kernel"], sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(params["bn1"]["scale"], sd["bn1.weight"])
    np.testing.assert_array_equal(stats["layer4_1"]["bn2"]["mean"], sd["layer4.1.bn2.running_mean"])
    trunk_only = resnet_weights.torchvision_resnet_to_flax(sd, "resnet18", include_fc=False)
    assert "fc" not in trunk_only["params"]
    assert artifact.count_parameters(trunk_only) == 11_176_512


def test_detect_format_and_moco_extraction(resnet18_numpy_state_dict):
    tv = resnet18_numpy_state_dict
    moco = {"module.encoder_q." + k: v for k, v in tv.items()}
    moco.update(
        {
            "module.encoder_q.fc.0.weight": np.zeros((4, 4)),
            "module.encoder_k.conv1.weight": np.ones((1,)),
            "module.queue": np.zeros((2, 3)),
            "module.queue_ptr": np.zeros(1),
        }
    )
    assert resnet_weights.detect_format({"state_dict": moco, "epoch": 800}) == "moco_v2"
    assert resnet_weights.detect_format(tv) == "torchvision"
    assert resnet_weights.detect_format({"state_dict": tv}) == "torchvision"
    assert resnet_weights.detect_format({"model": tv, "optimizer": {}}) == "torchvision"
    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        resnet_weights.detect_format({"epoch": 3, "notes": "no tensors"})

    encoder = resnet_weights.extract_moco_v2_encoder_q(moco)
    assert set(encoder) == {k for k in tv if not k.startswith("fc.")}
    with pytest.raises(ValueError, match="this is not a MoCo-v2 checkpoint"):
        resnet_weights.extract_moco_v2_encoder_q(tv)


def test_artifact_roundtrip_tamper_and_checks(tmp_path):
    variables = {
        "params": {"conv1": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}},
        "batch_stats": {"bn1": {"mean": np.ones(3, np.float32)}},
    }
    path = str(tmp_path / "a.npz")
    meta = save_artifact(path, variables, {"arch": "resnet18", "feature_dim": 512, "source": "x"})
    assert meta["format_version"] == 1 and meta["sha256"] == sha256_file(path)
    loaded, loaded_meta = load_artifact(path, expected_arch="resnet18")
    np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"], variables["params"]["conv1"]["kernel"])
    assert loaded_meta == meta

    with pytest.raises(ValueError, match="holds a 'resnet18' but 'resnet50'"):
        load_artifact(path, expected_arch="resnet50")

    with open(path, "r+b") as handle:  # flip one byte inside the stored array data
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=r"is corrupt or was modified: sha256 [0-9a-f]{64} != "):
        load_artifact(path)

    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_artifact(str(tmp_path / "missing.npz"))
    os.remove(path + ".json")
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_artifact(path)
