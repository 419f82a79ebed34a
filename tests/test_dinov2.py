"""DINOv2 porting: official / Hugging Face checkpoints -> Flax artifact -> same features as the torch code.

No real weights can be downloaded here. The checkpoints are random-init models built with the
official ``dinov2`` package (PyPI 0.0.1.dev2, installed with --no-deps) the way hub's
``dinov2_vits14`` builds them (img_size=518, patch 14, init_values=1.0, block_chunks=0), with every
LayerScale, LayerNorm, bias and the 37x37 positional embedding perturbed so that a wrong mapping or
a wrong pos-embed resize shows up in the features.
"""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from dinov2.models.vision_transformer import DinoVisionTransformer, vit_base, vit_small
from safetensors.numpy import save_file

from foprokd_jax.cli import convert_teacher
from foprokd_jax.models.vit import dinov2_vit
from foprokd_jax.porting import dinov2_weights
from foprokd_jax.porting.artifact import load_artifact, sha256_file
from tests.parity_report import parity_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_KWARGS = dict(patch_size=14, img_size=518, init_values=1.0, block_chunks=0)


class RegisterDinoViT(DinoVisionTransformer):
    """The register-token model of upstream dinov2 (Darcet et al. 2024), which PyPI 0.0.1.dev2 lacks.

    The three overridden methods follow facebookresearch/dinov2 main
    (``models/vision_transformer.py``): registers are inserted after CLS *after* the pos-embed add,
    and the pos-embed resize takes ``interpolate_offset`` / ``interpolate_antialias`` (hub passes 0.0
    and True for the ``_reg`` models).
    """

    def __init__(self, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.register_tokens = torch.nn.Parameter(torch.zeros(1, num_register_tokens, self.embed_dim))

    def interpolate_pos_encoding(self, x, w, h):
        num_patches, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if num_patches == n and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        w0, h0, m = w // self.patch_size, h // self.patch_size, int(math.sqrt(n))
        if self.interpolate_offset:
            kwargs = {
                "scale_factor": (float(w0 + self.interpolate_offset) / m, float(h0 + self.interpolate_offset) / m)
            }
        else:
            kwargs = {"size": (w0, h0)}
        patch = torch.nn.functional.interpolate(
            pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )
        assert (w0, h0) == patch.shape[-2:]
        patch = patch.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])
        return torch.cat((pos_embed[:, :1], patch), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x, masks=None):
        x = super().prepare_tokens_with_masks(x, masks)
        registers = self.register_tokens.expand(x.shape[0], -1, -1)
        return torch.cat((x[:, :1], registers, x[:, 1:]), dim=1)

    def forward_features(self, x, masks=None):
        out = super().forward_features(x, masks)
        x_norm = self.norm(out["x_prenorm"])
        out["x_norm_patchtokens"] = x_norm[:, self.num_register_tokens + 1 :]
        return out


def _perturb(model, seed):
    """Non-trivial values everywhere the default init is 0/1/constant or too small to matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("ls1.gamma", "ls2.gamma")) or "norm" in name and name.endswith("weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.05 * noise)
            elif name in ("pos_embed", "cls_token", "register_tokens"):
                param.copy_(0.5 * noise)
    return model.eval()


def _official_vit_s(seed):
    torch.manual_seed(seed)
    return _perturb(vit_small(**OFFICIAL_KWARGS), seed)


def _images(batch, size, seed):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _torch_features(model, images_nchw):
    with torch.inference_mode():
        out = model.forward_features(torch.from_numpy(images_nchw))
    return out["x_norm_clstoken"].numpy(), out["x_norm_patchtokens"].numpy()


def _flax_features(arch, variables, images_nchw, image_size):
    model = dinov2_vit(arch, image_size=image_size)
    out = jax.jit(model.apply)(variables, jnp.asarray(np.transpose(images_nchw, (0, 2, 3, 1))))
    return np.asarray(out["cls"]), np.asarray(out["patch_tokens"]), out


def _check_parity(name, arch, torch_model, artifact, sizes):
    variables, meta = load_artifact(artifact, expected_arch=arch)
    for size in sizes:
        if size != meta["image_size"]:
            continue
        images = _images(2, size, seed=size)
        cls, patches, out = _flax_features(arch, variables, images, size)
        ref_cls, ref_patches = _torch_features(torch_model, images)
        assert parity_report(f"{name} x_norm_clstoken @{size}", cls, ref_cls)[1] < 1e-4
        assert parity_report(f"{name} x_norm_patchtokens @{size}", patches, ref_patches)[1] < 1e-4
        np.testing.assert_array_equal(out["pre_logits"], out["cls"])
    return variables


def _to_hf_layout(state_dict):
    """Rename an official state dict into transformers' ``Dinov2Model`` safetensors layout."""
    hf = {}
    for key, value in state_dict.items():
        value = np.ascontiguousarray(value.numpy())
        top = {
            "cls_token": "embeddings.cls_token",
            "pos_embed": "embeddings.position_embeddings",
            "mask_token": "embeddings.mask_token",
            "register_tokens": "embeddings.register_tokens",
            "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
            "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
            "norm.weight": "layernorm.weight",
            "norm.bias": "layernorm.bias",
        }
        if key in top:
            hf[top[key]] = value
            continue
        _, index, rest = key.split(".", 2)
        prefix = f"encoder.layer.{index}."
        if rest.startswith("attn.qkv."):
            field = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), np.split(value, 3, axis=0)):
                hf[f"{prefix}attention.attention.{name}.{field}"] = np.ascontiguousarray(part)
            continue
        rest = (
            rest.replace("attn.proj.", "attention.output.dense.")
            .replace("ls1.gamma", "layer_scale1.lambda1")
            .replace("ls2.gamma", "layer_scale2.lambda1")
        )
        hf[prefix + rest] = value
    return hf


@pytest.fixture(scope="module")
def vit_s():
    return _official_vit_s(seed=0)


@pytest.fixture(scope="module")
def vit_s_pth(vit_s, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth")
    torch.save(vit_s.state_dict(), path)
    return path


@pytest.mark.parametrize("size", [224, 112])
def test_official_vits14_parity(vit_s, vit_s_pth, tmp_path, size):
    out = str(tmp_path / f"dinov2_vits14_{size}.npz")
    meta = convert_teacher.convert(vit_s_pth, out, arch="dinov2_vits14", fmt="dinov2", image_size=size)
    assert meta["family"] == "vit" and meta["feature_dim"] == 384 and meta["image_size"] == size
    assert meta["patch_size"] == 14 and meta["num_register_tokens"] == 0
    assert meta["source_format"] == "dinov2" and meta["source_sha256"] == sha256_file(vit_s_pth)
    assert meta["feature_key"] == "pre_logits"
    grid = size // 14
    # torch's count minus the unused mask_token, with the pos-embed at the baked grid.
    torch_count = sum(p.numel() for p in vit_s.parameters()) - 384 - 37 * 37 * 384
    assert meta["num_params"] == torch_count + grid * grid * 384
    _check_parity("official ViT-S/14", "dinov2_vits14", vit_s, out, [size])


def test_hf_layout_gives_the_same_features(vit_s, tmp_path):
    folder = tmp_path / "dinov2-small"
    folder.mkdir()
    save_file(_to_hf_layout(vit_s.state_dict()), str(folder / "model.safetensors"))
    out = str(tmp_path / "hf_s.npz")
    meta = convert_teacher.convert(str(folder), out, arch="dinov2_vits14", fmt="auto")
    assert meta["source_format"] == "hf_dinov2" and meta["image_size"] == 224
    _check_parity("HF ViT-S/14", "dinov2_vits14", vit_s, out, [224])


@pytest.mark.parametrize("size", [224, 168])
def test_register_vits14_parity(tmp_path, size):
    torch.manual_seed(3)
    model = _perturb(RegisterDinoViT(embed_dim=384, depth=12, num_heads=6, **OFFICIAL_KWARGS), 3)
    src, out = str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), str(tmp_path / "reg.npz")
    torch.save(model.state_dict(), src)
    meta = convert_teacher.convert(src, out, arch="dinov2_vits14_reg", fmt="dinov2", image_size=size)
    assert meta["num_register_tokens"] == 4
    assert meta["pos_embed_interpolation"] == {"interpolate_offset": 0.0, "interpolate_antialias": True}
    variables = _check_parity("official ViT-S/14+reg4", "dinov2_vits14_reg", model, out, [size])
    assert variables["params"]["register_tokens"].shape == (1, 4, 384)


def test_official_vitb14_parity(tmp_path):
    torch.manual_seed(5)
    model = _perturb(vit_base(**OFFICIAL_KWARGS), 5)
    src, out = str(tmp_path / "dinov2_vitb14_pretrain.pth"), str(tmp_path / "b.npz")
    torch.save(model.state_dict(), src)
    meta = convert_teacher.convert(src, out, arch="dinov2_vitb14", fmt="dinov2")
    assert meta["feature_dim"] == 768
    _check_parity("official ViT-B/14", "dinov2_vitb14", model, out, [224])


@pytest.mark.parametrize("grid", [16, 12, 8, 4, 40])
@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True)])
def test_pos_embed_resize_matches_torch(grid, offset, antialias):
    m, dim = 37, 6
    pos = np.random.default_rng(grid).standard_normal((1, 1 + m * m, dim)).astype(np.float32)
    kwargs = {"scale_factor": ((grid + offset) / m,) * 2} if offset else {"size": (grid, grid)}
    patch = torch.nn.functional.interpolate(
        torch.from_numpy(pos[:, 1:]).reshape(1, m, m, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=antialias,
        **kwargs,
    )
    reference = np.concatenate([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim).numpy()], 1)
    ours = dinov2_weights.resize_pos_embed(pos, grid, offset, antialias)
    assert ours.shape == (1, 1 + grid * grid, dim)
    assert np.abs(ours - reference).max() < 1e-5  # float32 rounding only
    np.testing.assert_array_equal(dinov2_weights.resize_pos_embed(pos, m, offset, antialias), pos)


def test_block_chunk_naming_is_accepted(vit_s):
    state = {k: v.numpy() for k, v in vit_s.state_dict().items()}
    # block_chunks=4 stores blocks.{chunk}.{global index}; chunk 1 holds blocks 3..5, and so on.
    chunked = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) // 3}.{index}.{rest}"
        chunked[key] = value
    plain = dinov2_weights.official_dinov2_to_flax(state, "dinov2_vits14", 224)
    converted = dinov2_weights.official_dinov2_to_flax(chunked, "dinov2_vits14", 224)
    jax.tree_util.tree_map(np.testing.assert_array_equal, converted, plain)


def test_truncated_files_are_clear_errors(vit_s_pth, tmp_path):
    data = open(vit_s_pth, "rb").read()
    src = str(tmp_path / "truncated.pth")
    with open(src, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(convert_teacher.CheckpointError, match="truncated.pth"):
        convert_teacher.convert(src, str(tmp_path / "t.npz"), arch="dinov2_vits14", fmt="dinov2")

    good = str(tmp_path / "model.safetensors")
    save_file({"embeddings.cls_token": np.zeros((1, 1, 384), np.float32)}, good)
    bad = str(tmp_path / "cut.safetensors")
    with open(bad, "wb") as handle:
        handle.write(open(good, "rb").read()[:-100])
    with pytest.raises(convert_teacher.CheckpointError, match="cut.safetensors"):
        convert_teacher.convert(bad, str(tmp_path / "t.npz"), arch="dinov2_vits14")
    assert not os.path.exists(tmp_path / "t.npz")


def test_wrong_arch_and_missing_keys_are_listed(vit_s, tmp_path):
    torch.manual_seed(1)
    base = DinoVisionTransformer(embed_dim=768, depth=2, num_heads=12, **OFFICIAL_KWARGS)
    src = str(tmp_path / "dinov2_vitb14_pretrain.pth")
    torch.save(base.state_dict(), src)
    with pytest.raises(ValueError) as info:
        convert_teacher.convert(src, str(tmp_path / "t.npz"), arch="dinov2_vits14", fmt="dinov2")
    message = str(info.value)
    assert src in message and "shape mismatches" in message
    assert "blocks.0.attn.qkv.weight" in message and "(384, 384)" in message
    assert "params/blocks_11/ls2/gamma" in message  # the 2-block model lacks blocks 2..11
    assert not os.path.exists(tmp_path / "t.npz")

    state = {k: v.numpy() for k, v in vit_s.state_dict().items()}
    del state["blocks.3.ls2.gamma"], state["norm.bias"]
    state["head.weight"] = np.zeros((10, 384), np.float32)
    with pytest.raises(ValueError) as info:
        dinov2_weights.official_dinov2_to_flax(state, "dinov2_vits14", 224)
    message = str(info.value)
    assert "missing from the checkpoint (2)" in message and "params/blocks_3/ls2/gamma" in message
    assert "params/norm/bias" in message and "unexpected checkpoint keys (1)" in message
    assert "head.weight" in message


def test_image_size_must_be_a_multiple_of_14(vit_s_pth, tmp_path):
    with pytest.raises(ValueError, match="multiple of the DINOv2 patch size 14"):
        convert_teacher.convert(vit_s_pth, str(tmp_path / "t.npz"), arch="dinov2_vits14", fmt="dinov2", image_size=200)
    with pytest.raises(ValueError, match="multiple of 14"):
        dinov2_vit("dinov2_vits14", image_size=200)
    model = dinov2_vit("dinov2_vits14", image_size=112)
    with pytest.raises(ValueError, match="built for 112x112"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))

    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "convert_teacher.py"),
            f"--src={vit_s_pth}",
            f"--out={tmp_path / 't.npz'}",
            "--arch=dinov2_vits14",
            "--format=dinov2",
            "--image_size=200",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
        check=False,
    )
    assert result.returncode != 0 and "multiple of the DINOv2 patch size" in result.stderr
