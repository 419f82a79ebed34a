"""benchmarks/students.py at tiny size: counts equal the models', FLOPs are XLA's, the tables list every row."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import students as bench
from foprokd_jax.models import students


def _backbone_gflops(arch, size, num_classes=None):
    module, _ = students.build_backbone(arch, num_classes, image_size=size)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    compiled = jax.jit(lambda v, x: module.apply(v, x, train=False)["pre_logits"]).lower(variables, x).compile()
    return compiled.cost_analysis()["flops"] / 1e9


def test_xla_flops_are_about_twice_the_published_macs():
    """torchvision documents 1.81 GFLOPS (multiply-adds) for resnet18 at 224 px; XLA counts 2 per MAC and
    skips the zero-padded taps, which lands within 10% of 2 x 1.81."""
    assert abs(_backbone_gflops("resnet18", 224, 1000) / (2 * 1.81) - 1) < 0.1


def test_student_benchmark_rows_and_tables():
    rows = [
        bench.benchmark_arch(arch, 32, batches=(1, 2), steps={1: 1, 2: 1}) for arch in ("resnet18", "vit_tiny_patch16")
    ]
    resnet, vit = rows
    # torchvision resnet18 trunk: 11,176,512 parameters; the EKD heads add fc (512*8+8), p_free
    # (512*512+512, BN 2*512, 512*2048+2048) and fc_free (2048*8+8).
    assert resnet["backbone_params"] == 11_176_512
    assert resnet["ekd_student_params"] == 11_176_512 + 4104 + 262_656 + 1024 + 1_050_624 + 16_392
    assert vit["backbone_params"] == 5_524_416 - 192 * (14 * 14 - 2 * 2)  # pos_embed of a 2x2 grid at 32 px
    # XLA's count for one 32-px ViT-Ti image: at least the 2 * MACs of its 12 blocks' matmuls on 5 tokens.
    assert vit["gflops_per_image"] >= 12 * 2 * 5 * (192 * 576 + 192 * 192 + 2 * 192 * 768) / 1e9
    # The inference graph costs the trunk plus a little (normalisation, fc, softmax).
    assert _backbone_gflops("resnet18", 32) <= resnet["gflops_per_image"] <= 1.05 * _backbone_gflops("resnet18", 32)
    for row in rows:
        assert row["jax_img_per_s"] > 0 and row["onnx_img_per_s"] > 0
        assert np.isclose(row["jax_img_per_s"], 2e3 / row["jax_b2"]["latency_ms"], rtol=1e-2)
    table = bench.markdown([dict(r, jax_b32=r["jax_b2"], onnx_b32=r["onnx_b2"]) for r in rows])
    assert table.count("| resnet18 |") == 2 and table.count("| vit_tiny_patch16 |") == 2
