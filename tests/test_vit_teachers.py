"""timm-layout ViT teachers (DINOv2-reg, DINOv3, RETFound, BiomedCLIP) and ConvNeXt: converted checkpoints give
the reference implementation's features.

No real weights can be downloaded here. References are timm's models (``vit_*_patch14_reg4_dinov2``,
``vit_*_patch16_dinov3[_qkvb]``, ``vit_large_patch16_224`` with global_pool='avg', ``vit_base_patch16_224``,
``convnext_*``) and torchvision's ``convnext_tiny/small``, built with pretrained=False and then randomised
everywhere (linear / conv weights with unit fan-in scale so attention is far from uniform, LayerNorm affine
parameters, LayerScale gammas, biases, CLS / register tokens and positional embeddings), saved in the real
on-disk formats (timm state dict .pth / .safetensors, RETFound's {'model': ...}, open_clip's ``visual.trunk.*``,
the official DINOv3 layout) and converted with ``launch/convert_teacher.py``. Parity is fp32 at two input sizes
(one needing a positional-embedding resize); the criterion is max |ours - ref| <= 1e-5 * max |ref|.
ViT-L/B shapes are converted at full width with fewer blocks (``shape={'depth': 2}``) to keep CPU time low;
the per-block mapping is the same code for every block.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from foprokd_jax.cli import convert_teacher
from foprokd_jax.models import build, convnext, teachers, vit
from foprokd_jax.porting.artifact import load_artifact, sha256_file
from foprokd_jax.porting.torch_compat import import_torchvision
from tests.parity_report import parity_report

torchvision = import_torchvision()
import timm  # noqa: E402  (after the torchvision shim: timm imports torchvision)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5  # of the output scale (max |reference|)
OPENAI_CLIP = (convert_teacher.OPENAI_CLIP_MEAN, convert_teacher.OPENAI_CLIP_STD)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values in every parameter, so that a wrong mapping of any of them shows in the features."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "gamma_1", "gamma_2", "layer_scale") or ("norm" in name and leaf == "weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
            elif leaf in ("cls_token", "reg_token", "pos_embed"):
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
            elif param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
            else:  # biases, incl. Eva's q_bias / v_bias
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _images(size, seed, batch=2):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _renormalise(images, source, target):
    """ImageNet-normalised NCHW images -> the same pixels normalised with `target` statistics."""
    (m_s, s_s), (m_t, s_t) = source, target
    raw = images * np.asarray(s_s, np.float32)[:, None, None] + np.asarray(m_s, np.float32)[:, None, None]
    return ((raw - np.asarray(m_t, np.float32)[:, None, None]) / np.asarray(s_t, np.float32)[:, None, None]).astype(
        np.float32
    )


def _ours(path, arch, images):
    module, variables, record = build.teacher_from_artifact(path, arch, image_size=images.shape[-1])
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
    return np.asarray(out["pre_logits"]), record


def _timm_vit(name, native, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=native, dynamic_img_size=True, **kwargs)


def _timm_features(model, images):
    with torch.inference_mode():
        return model(torch.from_numpy(images)).numpy()


def _check(name, ours, reference):
    _, error = parity_report(name, ours, reference)
    assert error <= TOLERANCE, (name, error)
    return error


# ------------------------------------------------------------------------------------------- timm-layout ViTs
def test_dinov2_reg_from_timm_safetensors(tmp_path):
    """The real ViT-S/14-reg4 (12 blocks) from timm's safetensors, 37x37 pos-embed resized to 4x4 and 8x8."""
    reference = randomise(_timm_vit("vit_small_patch14_reg4_dinov2", 518, global_pool="token"), 1)
    src = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, src)
    for size in (56, 112):
        out = str(tmp_path / f"reg_{size}.npz")
        meta = convert_teacher.convert(src, out, arch="dinov2_vits14_reg", fmt="timm", image_size=size)
        assert (meta["source_format"], meta["num_register_tokens"], meta["pos_embed_source_grid"]) == ("timm", 4, 37)
        assert meta["pos_embed_cls_entry"] == "zero (source has none)" and meta["image_size"] == size
        images = _images(size, size)
        ours, record = _ours(out, "dinov2_vits14_reg", images)
        _check(f"DINOv2-S/14-reg4 timm layout @{size}", ours, _timm_features(reference, images))
        assert record["feature_dim"] == 384


def test_dinov3_vits16_timm_layout(tmp_path):
    """The real DINOv3 ViT-S/16 (12 blocks, RoPE, 4 registers) from timm's _qkvb port (random q/v biases)."""
    reference = randomise(_timm_vit("vit_small_patch16_dinov3_qkvb", 224, global_pool="token"), 2)
    src = str(tmp_path / "dinov3_s16_timm.pth")
    torch.save(reference.state_dict(), src)
    for size in (64, 128):
        out = str(tmp_path / f"d3_{size}.npz")
        meta = convert_teacher.convert(src, out, arch="dinov3_vits16", image_size=size)
        assert (meta["position_encoding"], meta["norm_epsilon"], meta["rope_periods"]) == (
            "rope",
            1e-5,
            "float32 (computed)",
        )
        assert meta["zero_attention_biases"] == ["key"] and meta["source_sha256"] == sha256_file(src)
        images = _images(size, size + 1)
        _check(
            f"DINOv3-S/16 timm layout @{size}",
            _ours(out, "dinov3_vits16", images)[0],
            _timm_features(reference, images),
        )


def _official_dinov3_state_dict(model):
    """Write a timm Eva DINOv3 state dict back in facebookresearch/dinov3's layout (the inverse of timm's
    ``checkpoint_filter_fn``): storage_tokens, ls{1,2}.gamma, a fused qkv.bias with its bias_mask (k masked),
    the stored rope_embed.periods and the pre-training mask_token."""
    state, out = model.state_dict(), {}
    for key, value in state.items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if key.endswith("attn.q_bias"):
            v_bias = state[key.replace("q_bias", "v_bias")]
            # A non-zero k part that the mask must remove: converting it unmasked would break parity.
            out[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.full_like(value, 3.0), v_bias])
            out[key.replace("q_bias", "qkv.bias_mask")] = torch.cat(
                [torch.ones_like(value), torch.zeros_like(value), torch.ones_like(value)]
            )
            continue
        if key.endswith("attn.v_bias"):
            continue
        out[key] = value
    out["rope_embed.periods"] = model.rope.periods.clone()
    out["mask_token"] = torch.zeros(1, model.embed_dim)
    return out


@pytest.mark.parametrize(
    "arch,timm_name",
    [("dinov3_vitb16", "vit_base_patch16_dinov3_qkvb"), ("dinov3_vitl16", "vit_large_patch16_dinov3_qkvb")],
)
def test_dinov3_official_layout(tmp_path, arch, timm_name):
    """facebookresearch/dinov3 .pth layout (ViT-B and ViT-L widths, 2 blocks), detected by its storage_tokens."""
    reference = randomise(_timm_vit(timm_name, 224, global_pool="token", depth=2), 3)
    src = str(tmp_path / f"{arch}_pretrain.pth")
    torch.save(_official_dinov3_state_dict(reference), src)
    for size in (48, 96):
        out = str(tmp_path / f"{arch}_{size}.npz")
        meta = convert_teacher.convert(src, out, arch=arch, image_size=size, shape={"depth": 2})
        assert (meta["source_format"], meta["rope_periods"], meta["depth"]) == ("dinov3", "checkpoint", 2)
        variables, _ = load_artifact(out)
        assert not variables["params"]["blocks_0"]["attn"]["key"]["bias"].any()  # the bias_mask was applied
        images = _images(size, size + 2)
        _check(
            f"{arch} official layout (2 blocks) @{size}", _ours(out, arch, images)[0], _timm_features(reference, images)
        )


def test_dinov3_without_qkv_bias(tmp_path):
    """timm's non-_qkvb DINOv3 port has no q/k/v biases: all three become zeros."""
    reference = randomise(_timm_vit("vit_small_patch16_dinov3", 224, global_pool="token", depth=2), 4)
    src, out = str(tmp_path / "d3.pth"), str(tmp_path / "d3.npz")
    torch.save(reference.state_dict(), src)
    meta = convert_teacher.convert(src, out, arch="dinov3_vits16", image_size=64, shape={"depth": 2})
    assert meta["zero_attention_biases"] == ["key", "query", "value"]
    images = _images(64, 5)
    _check(
        "DINOv3-S/16 no qkv bias (2 blocks) @64",
        _ours(out, "dinov3_vits16", images)[0],
        _timm_features(reference, images),
    )


def test_retfound_model_checkpoint_mean_pool_fc_norm(tmp_path):
    """RETFound's fine-tuning layout: {'model': timm ViT-L/16 state dict} with fc_norm and no final norm; the
    feature is fc_norm(mean of the patch tokens) (timm global_pool='avg'). ViT-L width, 2 blocks."""
    reference = randomise(_timm_vit("vit_large_patch16_224", 224, global_pool="avg", depth=2), 5)
    assert isinstance(reference.norm, torch.nn.Identity)  # fc_norm replaces the final norm
    src = str(tmp_path / "RETFound_finetuned.pth")
    torch.save({"model": reference.state_dict(), "epoch": 49}, src)
    for size in (96, 224):
        out = str(tmp_path / f"retfound_{size}.npz")
        meta = convert_teacher.convert(src, out, arch="retfound_vitl16", image_size=size, shape={"depth": 2})
        assert (meta["pooling"], meta["layerscale_init"], meta["fc_norm_from"]) == ("mean", None, "fc_norm")
        assert meta["source_container"] == "model" and meta["pos_embed_source_grid"] == 14
        images = _images(size, size + 3)
        _check(
            f"RETFound ViT-L/16 (2 blocks) @{size}",
            _ours(out, "retfound_vitl16", images)[0],
            _timm_features(reference, images),
        )


def test_retfound_mae_pretraining_checkpoint(tmp_path):
    """An MAE pre-training checkpoint (RETFound_cfp_weights.pth: encoder + final norm + decoder + mask_token):
    the decoder is dropped and the final norm becomes fc_norm, as timm does for MAE weights."""
    reference = randomise(_timm_vit("vit_large_patch16_224", 224, global_pool="avg", depth=2), 6)
    state = {
        ("norm." + k[len("fc_norm.") :] if k.startswith("fc_norm.") else k): v
        for k, v in reference.state_dict().items()
    }
    state.update(
        {
            "mask_token": torch.zeros(1, 1, 512),
            "decoder_embed.weight": torch.zeros(512, 1024),
            "decoder_pred.bias": torch.zeros(768),
            "decoder_blocks.0.norm1.weight": torch.ones(512),
        }
    )
    src, out = str(tmp_path / "RETFound_cfp_weights.pth"), str(tmp_path / "mae.npz")
    torch.save({"model": state}, src)
    meta = convert_teacher.convert(src, out, arch="retfound_vitl16", image_size=224, shape={"depth": 2})
    assert meta["fc_norm_from"] == "norm"
    images = _images(224, 7)
    _check(
        "RETFound MAE pre-training ckpt (2 blocks) @224",
        _ours(out, "retfound_vitl16", images)[0],
        _timm_features(reference, images),
    )


def test_biomedclip_open_clip_checkpoint_with_folded_normalisation(tmp_path):
    """open_clip's BiomedCLIP file: visual.trunk.* (timm vit_base_patch16_224) beside the text tower and the
    512-d projection. Our artifact on ImageNet-normalised images == timm's trunk on the same pixels normalised
    with OpenAI-CLIP statistics (the conversion folds the change into the patch embedding)."""
    reference = randomise(_timm_vit("vit_base_patch16_224", 224, global_pool="token", depth=2), 8)
    state = {"visual.trunk." + k: v for k, v in reference.state_dict().items()}
    state.update(
        {
            "visual.head.proj.weight": torch.randn(512, 768),
            "logit_scale": torch.tensor(4.6),
            "text.transformer.embeddings.word_embeddings.weight": torch.randn(30, 768),
        }
    )
    src = str(tmp_path / "open_clip_pytorch_model.bin")
    torch.save(state, src)
    for size in (64, 224):
        out = str(tmp_path / f"biomedclip_{size}.npz")
        meta = convert_teacher.convert(src, out, arch="biomedclip_vitb16", image_size=size, shape={"depth": 2})
        assert meta["source_container"] == "visual.trunk" and meta["input_normalisation_folded_from"] == "openai_clip"
        images = _images(size, size + 4)  # ImageNet-normalised, what the pipeline feeds
        reference_features = _timm_features(reference, _renormalise(images, IMAGENET, OPENAI_CLIP))
        _check(
            f"BiomedCLIP ViT-B/16 (2 blocks, CLIP norm folded) @{size}",
            _ours(out, "biomedclip_vitb16", images)[0],
            reference_features,
        )


def test_vit_conversion_errors_list_what_is_wrong(tmp_path):
    reference = _timm_vit("vit_base_patch16_224", 224, depth=2)
    state = dict(reference.state_dict())
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:, :700]
    state["bogus.weight"] = torch.zeros(3)
    src, out = str(tmp_path / "bad.pth"), str(tmp_path / "t.npz")
    torch.save(state, src)
    with pytest.raises(ValueError) as info:
        convert_teacher.convert(src, out, arch="biomedclip_vitb16", image_size=224, shape={"depth": 2})
    message = str(info.value)
    assert src in message and "bogus.weight" in message and "params/blocks_1/mlp/fc2/bias" in message
    assert "blocks.0.attn.qkv.weight" in message and "(700, 768)" in message
    assert not os.path.exists(out)
    with pytest.raises(ValueError, match="multiple of the dinov3_vits16 patch size 16"):
        convert_teacher.convert(src, out, arch="dinov3_vits16", image_size=224 - 14)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "convert_teacher.py"),
            f"--src={src}",
            f"--out={out}",
            "--arch=retfound_vitl16",
            "--image_size=100",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 1 and "multiple of the retfound_vitl16 patch size 16" in result.stderr
    assert not os.path.exists(out)


# ------------------------------------------------------------------------------------------------ ConvNeXt
def _torchvision_convnext_features(model, images):
    with torch.inference_mode():
        pooled = model.avgpool(model.features(torch.from_numpy(images)))
        return model.classifier[1](model.classifier[0](pooled)).numpy()  # LayerNorm2d -> Flatten, before Linear


@pytest.mark.parametrize("arch", ["convnext_tiny", "convnext_small"])
def test_torchvision_convnext_parity(tmp_path, arch):
    torch.manual_seed(0)
    reference = randomise(getattr(torchvision.models, arch)(weights=None), 9)
    src, out = str(tmp_path / f"{arch}.pth"), str(tmp_path / f"{arch}.npz")
    torch.save(reference.state_dict(), src)
    meta = convert_teacher.convert(src, out, arch=arch)
    assert (meta["family"], meta["feature_dim"], meta["source_format"]) == ("convnext", 768, "torchvision")
    classifier = sum(p.numel() for p in reference.classifier[2].parameters())
    assert meta["num_params"] == sum(p.numel() for p in reference.parameters()) - classifier
    for size in (32, 64):
        images = _images(size, size)
        _check(
            f"torchvision {arch} @{size}",
            _ours(out, arch, images)[0],
            _torchvision_convnext_features(reference, images),
        )


def test_timm_convnext_safetensors_parity(tmp_path):
    reference = randomise(timm.create_model("convnext_tiny", pretrained=False), 10)
    src, out = str(tmp_path / "model.safetensors"), str(tmp_path / "cn.npz")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, src)
    meta = convert_teacher.convert(src, out, arch="convnext_tiny")
    assert meta["source_format"] == "timm"
    for size in (32, 64):
        images = _images(size, size + 5)
        with torch.inference_mode():
            expected = reference.forward_head(
                reference.forward_features(torch.from_numpy(images)), pre_logits=True
            ).numpy()
        _check(f"timm convnext_tiny @{size}", _ours(out, "convnext_tiny", images)[0], expected)


def test_convnext_wrong_arch_is_listed(tmp_path):
    src = str(tmp_path / "t.pth")
    torch.save(torchvision.models.convnext_tiny(weights=None).state_dict(), src)
    with pytest.raises(ValueError) as info:
        convert_teacher.convert(src, str(tmp_path / "s.npz"), arch="convnext_small")
    assert "missing from the checkpoint (162)" in str(info.value) and "params/stages_2_blocks_10/gamma" in str(
        info.value
    )


def test_registry_builds_every_new_teacher_from_its_arch():
    """Each new registry entry's arch builds (shapes only) with the registry's width at its native size."""
    for name in (
        "dinov2_s14_reg",
        "dinov3_s16",
        "dinov3_b16",
        "dinov3_l16",
        "retfound_l16",
        "biomedclip_b16",
        "imagenet_convnext_t",
        "imagenet_convnext_s",
    ):
        spec = teachers.get_teacher_spec(name)
        meta = {"arch": spec.arch, "family": spec.family, "image_size": spec.input_size}
        module = teachers.build_teacher_module(meta, image_size=spec.input_size)
        shapes = jax.eval_shape(lambda m=module: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
        out = jax.eval_shape(lambda v, m=module: m.apply(v, jnp.zeros((1, 224, 224, 3))), shapes)
        assert out["pre_logits"].shape == (1, spec.feature_dim) == (1, module.feature_dim), name
        assert isinstance(module, convnext.ConvNeXt if spec.family == "convnext" else vit.VisionTransformer)
        assert spec.feature and spec.source and f"--arch={spec.arch}" in spec.convert
