"""benchmarks/mixed_precision_effect.py: its metrics on hand-made values, its BN calibration against numpy
moments, and the whole bf16-vs-f32 comparison on tiny nets at 32 px (bf16 really differs, but only slightly;
f32 against itself is exact; every FFT of the FPG stays float32 under a bf16 teacher)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import mixed_precision_effect as mpe
from benchmarks import numerics_agreement as agreement
from foprokd_jax.methods import student_step as steps
from foprokd_jax.porting import artifact

SIZE = 32


def test_feature_metrics_on_hand_made_vectors():
    approx = np.array([[1.0, 0.0], [3.0, 4.0]])
    exact = np.array([[1.0, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(agreement.per_sample_cosine(approx, exact), [1 / math.sqrt(2), 1.0])
    np.testing.assert_allclose(agreement.relative_l2(approx, exact), [1 / math.sqrt(2), 0.0])
    m = agreement.feature_agreement(approx, exact)
    np.testing.assert_allclose(m["cos_mean"], (1 / math.sqrt(2) + 1) / 2)
    np.testing.assert_allclose(m["cos_min"], 1 / math.sqrt(2))
    np.testing.assert_allclose(m["rel_median"], 1 / (2 * math.sqrt(2)))
    np.testing.assert_allclose(m["rel_max"], 1 / math.sqrt(2))
    # Errors |a_i - b_i| = (1, 0), median 0.5; rows of exact deviate from their mean (2, 2.5) by (-1, -1.5), (1, 1.5).
    np.testing.assert_allclose(m["spread_rel_median"], 0.5 / math.sqrt(3.25))
    with pytest.raises(ValueError, match="one shape"):
        agreement.feature_agreement(approx, exact[:1])
    with pytest.raises(ValueError, match=r"reference rows \[1\] are all zero"):
        agreement.feature_agreement(approx, np.array([[1.0, 1.0], [0.0, 0.0]]))


def test_gradient_agreement_on_hand_made_trees():
    exact = {"a": np.array([1.0, 0.0]), "b": {"c": np.array([[0.0, 2.0]])}, "z": np.array([1e-9])}
    approx = {"a": np.array([1.0, 0.0]), "b": {"c": np.array([[2.0, 0.0]])}, "z": np.array([-5e-3])}
    g = agreement.gradient_agreement(approx, exact)
    # Flattened (a, b/c, z): exact (1, 0, 0, 2, 1e-9), approx (1, 0, 2, 0, -5e-3).
    va, vb = np.array([1, 0, 2, 0, -5e-3]), np.array([1, 0, 0, 2, 1e-9])
    np.testing.assert_allclose(g["cos"], va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
    np.testing.assert_allclose(g["rel"], np.linalg.norm(va - vb) / np.linalg.norm(vb))
    # 'z' has a negligible reference gradient (1e-9 << the median tensor norm): skipped in the per-tensor minimum.
    assert g["skipped"] == ["z"] and g["min_leaf"] == "b/c" and g["min_leaf_cos"] == 0.0
    with pytest.raises(ValueError, match="same tree"):
        agreement.gradient_agreement({"a": np.ones(2)}, exact)


def test_calibrated_running_stats_are_the_batch_moments_and_make_eval_equal_train():
    teacher, _ = mpe.build_models(jnp.float32, tiny=True)
    variables = mpe.init_variables(teacher, SIZE, 0)
    batches = [steps.normalize_images(jnp.asarray(mpe.benchmark_images(8, SIZE, s)[0])) for s in (1, 2)]
    calibrated = mpe.calibrate_batch_stats(teacher, variables, batches)
    # The stem BN's input is conv1(x): its per-channel moments over (B, H, W), averaged over the two batches.
    kernel = variables["params"]["conv1"]["kernel"]
    conv = [
        np.asarray(
            jax.lax.conv_general_dilated(
                x, kernel, (2, 2), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            ),
            np.float64,
        )
        for x in batches
    ]
    stats = calibrated["batch_stats"]["bn1"]
    np.testing.assert_allclose(stats["mean"], np.mean([c.mean((0, 1, 2)) for c in conv], 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["var"], np.mean([c.var((0, 1, 2)) for c in conv], 0), rtol=1e-4)
    # Calibrated on one batch, every BN's running statistics are that batch's: eval mode reproduces train mode.
    one = mpe.calibrate_batch_stats(teacher, variables, batches[:1])
    np.testing.assert_allclose(
        mpe.forward(teacher, one, batches[0], train=False)["pre_logits"],
        mpe.forward(teacher, one, batches[0], train=True)["pre_logits"],
        rtol=1e-3,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="at least one batch"):
        mpe.calibrate_batch_stats(teacher, variables, [])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole benchmark on tiny nets, with the teacher read from a converted-artifact file (the
    --teacher_artifact path): a tiny ResNet with BN statistics calibrated on a batch of the benchmark's images."""
    folder = tmp_path_factory.mktemp("mpe")
    teacher, _ = mpe.build_models(jnp.float32, tiny=True)
    calib = steps.normalize_images(jnp.asarray(mpe.benchmark_images(8, SIZE, 1)[0]))
    variables = mpe.calibrate_batch_stats(teacher, mpe.init_variables(teacher, SIZE, 0), [calib])
    meta = dict(
        arch="tiny_resnet",
        family="resnet",
        block="bottleneck",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in mpe.TINY_TEACHER.items() if k != "block"},
    )
    sidecar = artifact.save_artifact(str(folder / "teacher.npz"), jax.tree.map(np.asarray, variables), meta)
    out = folder / "result.json"
    result = mpe.main(
        [
            f"--size={SIZE}",
            "--batch=8",
            "--calib_batches=1",
            "--tiny",
            "--f32_precision=default",
            f"--teacher_artifact={folder / 'teacher.npz'}",
            f"--out={out}",
        ]
    )
    return result, json.loads(out.read_text()), sidecar


def test_bf16_differs_from_f32_only_slightly_on_tiny_nets(tiny_run):
    result, written, sidecar = tiny_run
    assert written["features"] == result["features"] and written["args"]["tiny"] is True
    assert result["teacher"]["sha256"] == sidecar["sha256"]  # the artifact's weights were measured
    for name, m in result["features"].items():
        if "context" in name or "rounded input" in name:
            continue
        assert 0.99 < m["cos_min"] <= m["cos_mean"] < 1.0, (name, m)
        assert m["rel_max"] > 0.0, name  # bit-identical results would mean the bf16 switch had no effect
    for name in ("bf16 student", "bf16 teacher", "bf16 both"):
        assert 0.99 < result["loss_grad"][name]["grad_cos"] < 1.0 and result["loss_grad"][name]["grad_rel"] > 0, name
        assert 0.0 < result["loss_grad"][name]["loss_rel"] < 1e-2, name
    assert result["loss_grad"]["bf16 teacher"]["loss_cls_rel"] == 0.0  # the teacher only enters the distill term


def test_fpg_ffts_stay_float32_under_a_bf16_teacher(tiny_run):
    fopro = tiny_run[0]["fopro"]
    assert fopro["fft_all_float32"] and fopro["teacher_conv_input_dtypes"] == ["bfloat16"]
    kinds = {(f[1], f[2][0]) for f in fopro["jaxpr_ffts"]}
    assert kinds == {("RFFT", "float32"), ("IRFFT", "complex64")}, kinds
    assert len(fopro["stablehlo_ffts"]) == len(fopro["jaxpr_ffts"])
    assert all("bf16" not in sig and "xf32" in sig for sig in fopro["stablehlo_ffts"])


def test_float32_against_itself_is_exact(tiny_run):
    teacher, student = mpe.build_models(jnp.float32, tiny=True)
    x = steps.normalize_images(jnp.asarray(mpe.benchmark_images(8, SIZE, 0)[0]))
    variables = mpe.init_variables(student, SIZE, 1)
    a, b = (mpe.forward(student, variables, x, train=True) for _ in range(2))
    for key in mpe.STUDENT_KEYS:
        assert np.array_equal(a[key], b[key])
        m = agreement.feature_agreement(a[key], b[key])
        assert m["rel_max"] == 0.0 and m["spread_rel_median"] == 0.0 and abs(m["cos_min"] - 1.0) < 1e-12


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--size >= 32"):
        mpe.run_benchmark(16, 4, tiny=True)
    with pytest.raises(ValueError, match="f32_precision='fast'"):
        mpe.run_benchmark(32, 4, tiny=True, f32_precision="fast")
    with pytest.raises(SystemExit, match="--out=/no/such/dir/r.json"):
        mpe.main(["--tiny", "--size=32", "--out=/no/such/dir/r.json"])
    with pytest.raises(FileNotFoundError, match="no_such_teacher.npz"):
        mpe.run_benchmark(32, 4, tiny=True, teacher_artifact="no_such_teacher.npz")
    densenet = str(tmp_path / "densenet.npz")  # its distilled feature is 'features', not 'pre_logits'
    artifact.save_artifact(
        densenet,
        {"params": {"w": np.zeros(1, np.float32)}},
        dict(arch="tiny_densenet", family="densenet", growth_rate=4, block_config=[1], num_init_features=8, bn_size=2),
    )
    with pytest.raises(ValueError, match=r"densenet.npz is a 'densenet' teacher"):
        mpe.load_teacher(densenet, 32)
