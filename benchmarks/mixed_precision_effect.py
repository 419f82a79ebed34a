"""bfloat16 vs float32 compute: how far features, the EKD loss and its gradients move (issue 8 item 4).

    .venv/bin/python -m benchmarks.mixed_precision_effect --size=224 --batch=16 [--out=mp224.json]

`config.student.dtype` / `config.teacher.dtype = 'bfloat16'` run convolutions and matmuls in bfloat16; parameters,
BatchNorm statistics, optimiser state, the FPG's FFT and every loss stay float32. Each comparison runs the SAME
float32 variables through a float32 and a bfloat16 compute-dtype module: (1) the frozen ResNet-50 teacher in
inference mode ('pre_logits', and its stage maps to see where the difference builds up); (2) the EKD student
(ResNet-18 + heads) h, z1, z2, p in eval mode (running statistics) and train mode (batch statistics); (3) the
EKD loss terms (`methods/ekd/objective.py`) and its gradient w.r.t. the student parameters for a bf16 student, a bf16
teacher and both; (4) FoPro-KD with a bf16 teacher: the dtype of every FFT of the FPG objective's forward and
backward (jaxpr and StableHLO), the teacher's features of prompted images and the FPG's gradient.
Context rows (marked so) put the numbers on a scale: the float32 pipeline on the same images with +-1 grey level
of random dither (an invisible change), and on an independent batch (SGD noise).

Weights: real MoCo/ImageNet weights cannot be downloaded here, so both nets get the project's torch-style random
init (`models/torch_init.py`) with realistic BatchNorm running statistics instead of the fresh 0/1:
`calibrate_batch_stats` stores, per BN layer, the mean over `--calib_batches` train-mode batches of the batch
mean and (biased) variance train mode normalised with, so eval mode normalises like a trained net on this image
distribution. Images: `data/synthetic.py` lesions plus a 1/f colour texture (the natural-image spectrum),
ImageNet-normalised as in training; calibration, evaluation and context batches are disjoint draws.
`--teacher_artifact` measures a converted teacher (real weights and BN statistics) instead.

Metrics per sample i, a = bf16 result, b = f32 result: cos(a_i, b_i); relative L2 |a_i - b_i| / |b_i|; and
|a_i - b_i| over the batch spread sqrt(mean_j |b_j - mean_k b_k|^2), the error against the part of the feature
that differs between images (post-ReLU features share a large common component). Gradients: cosine and
relative L2 of all parameters flattened, and the lowest cosine of any single tensor.
"""

import argparse
import contextlib
import functools
import json
import os
import re
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.numerics_agreement import (
    band_gradient_agreement,
    feature_agreement,
    gradient_agreement,
    op_dtypes,
    scalar_relative_error,
    stablehlo_fft_signatures,
)
from configs import common
from foprokd_jax import losses
from foprokd_jax.data import synthetic
from foprokd_jax.data.isic_splits import NUM_CLASSES
from foprokd_jax.methods import student_step
from foprokd_jax.methods.ekd.objective import ekd_objective
from foprokd_jax.methods.fopro import method as fopro_method
from foprokd_jax.methods.fopro import step as fopro_step
from foprokd_jax.models import build
from foprokd_jax.models.ekd_student import EKDStudent
from foprokd_jax.models.resnet import BN_MOMENTUM, ResNet, resnet50
from foprokd_jax.porting import artifact

STUDENT_KEYS = ("h", "z1", "z2", "p")
TEACHER_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits")
F32_PRECISIONS = ("highest", "default")
# Context rows: the float32 pipeline on the same images re-quantised with +-1 grey level of random dither, an
# image change no one can see, measured with the same metrics against the same float32 reference.
CONTEXT_DITHER = "f32, image +-1 grey level (context)"
# --tiny: the nets the tests use (32 px and up; every stage halves the map).
TINY_TEACHER = dict(stage_sizes=(1, 1), block="bottleneck", width=8)
TINY_STUDENT = dict(stage_sizes=(1, 1), width=8)


# ------------------------------------------------------------------------------------ images and models


def _pink_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A unit-std colour texture with a 1/f amplitude spectrum (natural images' second-order statistics)."""
    white = rng.standard_normal((size, size, 3))
    white[..., :] += 2.0 * rng.standard_normal((size, size, 1))  # mostly shared luminance: colours correlate
    freq = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2)
    spectrum = np.fft.fft2(white, axes=(0, 1)) / np.maximum(freq, 1.0 / size)[..., None]
    texture = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    return (texture - texture.mean()) / texture.std()


def benchmark_images(n: int, size: int, seed: int):
    """(uint8 images (n, size, size, 3), int32 labels): synthetic lesions (class i % 8) + a 1/f texture."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % NUM_CLASSES
    images = [
        np.asarray(synthetic._draw_lesion(int(y), size, size, rng), np.float32) + 25.0 * _pink_texture(size, rng)
        for y in labels
    ]
    return np.clip(np.stack(images), 0, 255).astype(np.uint8), labels


def grey_level_dither(images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 images with a random -1, 0 or +1 added to every value (clipped to 0..255)."""
    noise = np.random.default_rng(seed + 7).integers(-1, 2, images.shape)
    return np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def build_models(dtype, tiny: bool = False, teacher=None):
    """(teacher, student) in compute `dtype`; parameters are float32 in both dtypes. `teacher`: a loaded
    teacher module to use (in `dtype`) instead of ResNet-50 (or the tiny ResNet)."""
    if teacher is not None:
        teacher = teacher.clone(dtype=dtype)
    else:
        teacher = ResNet(dtype=dtype, **TINY_TEACHER) if tiny else resnet50(dtype=dtype)
    trunk = TINY_STUDENT if tiny else dict(trunk="resnet18")
    student = EKDStudent(num_classes=NUM_CLASSES, teacher_dim=teacher.feature_dim, dtype=dtype, **trunk)
    return teacher, student


# Module-level jits with the (hashable, compared-by-value) Flax module static: one compile per module and shape.
@functools.partial(jax.jit, static_argnames=("module", "size"))
def _init(module, rng, size: int):
    return module.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)


@functools.partial(jax.jit, static_argnames=("module",))
def _batch_moments(module, params, zero_stats, x):
    _, mutated = module.apply({"params": params, "batch_stats": zero_stats}, x, train=True, mutable=["batch_stats"])
    return jax.tree.map(lambda new: new / (1.0 - BN_MOMENTUM), mutated["batch_stats"])


@functools.partial(jax.jit, static_argnames=("module", "train"))
def _apply(module, variables, x, train: bool):
    return module.apply(variables, x, train=train, mutable=["batch_stats"])[0]


def load_teacher(path: str, size: int):
    """(module, variables, record) of a converted teacher artifact (`launch/convert_teacher.py`): real weights
    and BN statistics, used as they are. Its distilled feature must be 'pre_logits' (ResNet or DINOv2)."""
    _, meta = artifact.load_artifact(path)
    module, variables, record = build.teacher_from_artifact(path, meta["arch"], image_size=size)
    if record["family"] not in ("resnet", "vit"):
        raise ValueError(
            f"--teacher_artifact={path} is a {record['family']!r} teacher; this benchmark compares "
            "'pre_logits' features, which only the ResNet and DINOv2 teachers return"
        )
    return module, variables, record


def init_variables(module, size: int, seed: int) -> dict:
    """The module's own (torch-style) init, float32 parameters and BN statistics."""
    return flax.core.unfreeze(_init(module, jax.random.PRNGKey(seed), size=size))


def calibrate_batch_stats(module, variables: dict, batches) -> dict:
    """`variables` with every BN's running mean/var replaced by the mean over `batches` of the batch moments.

    Train mode updates running = m * old + (1 - m) * batch (m = BN_MOMENTUM); starting from zeros, the batch
    moment is exactly new / (1 - m). Layers are normalised by their batch moments during the pass, as in
    torch's `update_bn` recalibration; eval mode then reproduces train mode on these images.
    """
    zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    per_batch = [
        jax.tree.map(lambda v: np.asarray(v, np.float64), _batch_moments(module, variables["params"], zeros, x))
        for x in batches
    ]
    if not per_batch:
        raise ValueError("calibrate_batch_stats needs at least one batch")
    mean = jax.tree.map(lambda *vs: np.mean(vs, axis=0).astype(np.float32), *per_batch)
    return dict(variables, batch_stats=jax.tree.map(jnp.asarray, mean))


def forward(module, variables, x, train: bool) -> dict:
    """The module's outputs as float64 numpy; train mode uses batch statistics (state update discarded)."""
    return {k: np.asarray(v, np.float64) for k, v in _apply(module, variables, x, train=train).items()}


def make_ekd_grad(student, cls_loss, free_u: float):
    """jit of (params, batch_stats, x, labels, teacher_feat) -> (loss, terms, grads) of the EKD objective."""

    def loss_fn(params, batch_stats, x, labels, teacher_feat):
        out, mutated = student.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss, terms = ekd_objective(out, labels, cls_loss, free_u, teacher_feat)
        return loss, (terms, mutated["batch_stats"], out["z1"])

    @jax.jit
    def run(params, batch_stats, x, labels, teacher_feat):
        (loss, (terms, _, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, labels, teacher_feat
        )
        return loss, terms, grads

    return run


# ------------------------------------------------------------------------------------------ FoPro-KD


def fpg_setup(config, teacher_dim: int, size: int, seed: int):
    """(prompt, explore head, FPG params): the FPG of `config` (configs/common.py defaults) with its gain logits
    drawn N(0, 0.5^2) instead of zero, so that the prompt is not the identity."""
    prompt, head = fopro_method.prompt_from_config(config, teacher_dim, NUM_CLASSES)
    params = fopro_method.init_prompt(prompt, head, teacher_dim, size, jax.random.PRNGKey(seed))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 64))
    params["prompt"] = jax.tree.map(lambda p: 0.5 * jax.random.normal(next(keys), p.shape), params["prompt"])
    return prompt, head, params, config.fpg


def make_fpg_grad(teacher, prompt, head, cls_loss, fpg_config):
    """(fpg_params, teacher_vars, x, labels, student_p) -> ((loss, (terms, t)), grads) of the FPG objective."""

    def objective(fpg_params, teacher_vars, x, labels, student_p):
        return fopro_step.fpg_objective(
            fpg_params,
            teacher_vars,
            x,
            labels,
            student_p,
            teacher=teacher,
            prompt=prompt,
            explore_head=head,
            cls_loss=cls_loss,
            lambda_cls=fpg_config.lambda_cls,
            lambda_adv=fpg_config.lambda_adv,
            lambda_reg=fpg_config.lambda_reg,
            teacher_feature_key="pre_logits",
        )

    return jax.value_and_grad(objective, has_aux=True)


# -------------------------------------------------------------------------------------------- the run


def run_benchmark(
    size: int,
    batch: int,
    calib_batches: int = 2,
    seed: int = 0,
    tiny: bool = False,
    fopro: bool = True,
    f32_precision: str = "highest",
    teacher_artifact: str = "",
    log=print,
) -> dict:
    """All four comparisons; returns a JSON-able dict (see `format_report`).

    teacher_artifact: a converted teacher (.npz + sidecar) to measure with its real weights instead of the
    random, BN-calibrated ResNet-50.

    f32_precision: 'highest' makes the float32 reference true float32 on accelerators too (by default JAX
    runs float32 convolutions/matmuls as TF32 on recent GPUs and as bfloat16 passes on TPU; the setting only
    touches 32-bit operands, so the bfloat16 runs are unaffected); 'default' keeps JAX's default.
    """
    if size < 32 or batch < 2 or calib_batches < 1:
        raise ValueError(
            f"need --size >= 32, --batch >= 2 and --calib_batches >= 1, got {size}, {batch}, {calib_batches}"
        )
    if f32_precision not in F32_PRECISIONS:
        raise ValueError(f"f32_precision={f32_precision!r} is not one of {F32_PRECISIONS}")
    context = contextlib.nullcontext() if f32_precision == "default" else jax.default_matmul_precision("highest")
    with context:
        return _run(size, batch, calib_batches, seed, tiny, fopro, teacher_artifact, log)


def _run(size, batch, calib_batches, seed, tiny, fopro, teacher_artifact, log) -> dict:
    start = time.perf_counter()
    note = lambda what: log(f"{what} ({time.perf_counter() - start:.0f} s)")  # noqa: E731
    loaded = load_teacher(teacher_artifact, size) if teacher_artifact else None
    (t32, s32), (t16, s16) = (
        build_models(dtype, tiny, loaded[0] if loaded else None) for dtype in (jnp.float32, jnp.bfloat16)
    )
    f32 = jnp.float32
    uint8, labels = benchmark_images(batch, size, seed)
    x, labels = student_step.normalize_images(jnp.asarray(uint8)), jnp.asarray(labels)
    x_dither = student_step.normalize_images(jnp.asarray(grey_level_dither(uint8, seed)))
    other_uint8, other_labels = benchmark_images(batch, size, seed + 1)
    x_other = student_step.normalize_images(jnp.asarray(other_uint8))
    calib = [
        student_step.normalize_images(jnp.asarray(benchmark_images(batch, size, seed + 100 + k)[0]))
        for k in range(calib_batches)
    ]
    tv = loaded[1] if loaded else calibrate_batch_stats(t32, init_variables(t32, size, seed), calib)
    sv = calibrate_batch_stats(s32, init_variables(s32, size, seed + 1), calib)
    note("models initialised and BN-calibrated")

    features = {}

    def compare(name, approx, exact):
        features[name] = feature_agreement(approx.reshape(batch, -1), exact.reshape(batch, -1))

    full = {name: forward(t, tv, x, train=False) for name, t in (("f32", t32), ("bf16", t16))}
    for key in (k for k in TEACHER_STAGES if k in full["f32"]):  # where along the depth the difference builds up
        compare(f"teacher {key} | eval", full["bf16"][key], full["f32"][key])
    teacher_feat = {name: out["pre_logits"] for name, out in full.items()}
    del full
    # The part due to rounding the input alone (the bf16 teacher casts its input first), and for scale what an
    # imperceptible image change does to the float32 net.
    compare(
        "teacher pre_logits | f32 net, bf16-rounded input",
        forward(t32, tv, x.astype(jnp.bfloat16).astype(f32), train=False)["pre_logits"],
        teacher_feat["f32"],
    )
    t_dither = forward(t32, tv, x_dither, train=False)["pre_logits"]
    compare(f"teacher pre_logits | {CONTEXT_DITHER}", t_dither, teacher_feat["f32"])
    for mode in ("eval", "train"):
        o32, o16 = (forward(s, sv, x, train=mode == "train") for s in (s32, s16))
        for key in STUDENT_KEYS:
            compare(f"student {key} | {mode}", o16[key], o32[key])
    compare(f"student p | train, {CONTEXT_DITHER}", forward(s32, sv, x_dither, train=True)["p"], o32["p"])
    note("features compared")

    counts = np.floor(1000 * 0.01 ** (np.arange(NUM_CLASSES) / (NUM_CLASSES - 1))).astype(int)  # ISIC-LT, imb 100
    config = common.method_config("fopro")  # the defaults: BSM on both heads, free_u = 3, the 'spectrum' FPG
    cls_loss = losses.make_classification_loss(config.loss, counts)
    grad_fns = {name: make_ekd_grad(s, cls_loss, config.loss.free_u) for name, s in (("f32", s32), ("bf16", s16))}

    def ekd(student_dtype, x_in, y, t):
        loss, terms, grads = grad_fns[student_dtype](sv["params"], sv["batch_stats"], x_in, y, jnp.asarray(t, f32))
        return dict(loss=float(loss), **{k: float(v) for k, v in terms.items()}), grads

    ref_terms, ref_grads = ekd("f32", x, labels, teacher_feat["f32"])
    runs = {
        "bf16 student": ("bf16", x, labels, teacher_feat["f32"]),
        "bf16 teacher": ("f32", x, labels, teacher_feat["bf16"]),
        "bf16 both": ("bf16", x, labels, teacher_feat["bf16"]),
        CONTEXT_DITHER: ("f32", x_dither, labels, t_dither),
        "f32, another batch (context)": (
            "f32",
            x_other,
            jnp.asarray(other_labels),
            forward(t32, tv, x_other, train=False)["pre_logits"],
        ),
    }
    loss_grad = {"f32 reference values": ref_terms}
    for name, run in runs.items():
        terms, grads = ekd(*run)
        loss_grad[name] = dict(
            {f"{k}_rel": scalar_relative_error(terms[k], ref_terms[k]) for k in ref_terms},
            **{f"grad_{k}": v for k, v in gradient_agreement(grads, ref_grads).items()},
        )
    note("EKD loss and gradients compared")

    teacher = (
        {k: loaded[2][k] for k in ("artifact", "sha256", "arch")}
        if loaded
        else "random torch-style init, BN statistics calibrated"
    )
    result = dict(teacher=teacher, features=features, loss_grad=loss_grad)
    if fopro:
        prompt, head, fpg_params, fpg_config = fpg_setup(config, t32.feature_dim, size, seed)
        p = jnp.asarray(o32["p"], f32)  # the f32 student's train-mode projection, a constant to the FPG
        fns = {
            name: jax.jit(make_fpg_grad(t, prompt, head, cls_loss, fpg_config))
            for name, t in (("f32", t32), ("bf16", t16))
        }
        args = (fpg_params, tv, x, labels, p)
        ffts = op_dtypes(fns["bf16"], *args)
        hlo = stablehlo_fft_signatures(fns["bf16"], *args)
        convs = op_dtypes(fns["bf16"], *args, primitives=("conv_general_dilated",))
        fopro_result = dict(
            jaxpr_ffts=[list(f) for f in ffts],
            stablehlo_ffts=hlo,
            teacher_conv_input_dtypes=sorted({d for c in convs for d in c[2]}),
            fft_all_float32=bool(ffts)
            and len(hlo) == len(ffts)
            and all(set(f[2] + f[3]) <= {"float32", "complex64"} for f in ffts)
            and not any(re.search(r"bf16|f16", sig) for sig in hlo),
        )
        (l32, (_, t_ref)), g32 = fns["f32"](*args)
        for name, fn, x_in in (("bf16 teacher", fns["bf16"], x), (CONTEXT_DITHER, fns["f32"], x_dither)):
            (loss, (_, t)), g = fn(fpg_params, tv, x_in, labels, p)
            compare(f"teacher pre_logits | prompted, {name}", np.asarray(t), np.asarray(t_ref))
            fopro_result[name] = dict(
                fpg_loss_rel=scalar_relative_error(loss, l32),
                prompt_grad=gradient_agreement(g["prompt"], g32["prompt"]),
                explore_head_grad=gradient_agreement(g["explore_head"], g32["explore_head"]),
                prompt_grad_bands=band_gradient_agreement(g["prompt"], g32["prompt"], size),
            )
        result["fopro"] = fopro_result
        note("FoPro-KD prompt path checked")
    result["wall_s"] = time.perf_counter() - start
    return result


def format_report(result: dict, size: int, batch: int) -> str:
    """Markdown tables of `run_benchmark`'s result."""
    lines = [
        f"\nbf16 vs f32 compute, identical f32 parameters; {size}px, batch {batch}; teacher: {result['teacher']}\n",
        "| output | mode | cos mean | cos min | rel L2 median | rel L2 max | err / batch spread (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, m in result["features"].items():
        name, mode = key.split(" | ")
        lines.append(
            f"| {name} | {mode} | {m['cos_mean']:.6f} | {m['cos_min']:.6f} | {m['rel_median']:.2e} | "
            f"{m['rel_max']:.2e} | {m['spread_rel_median']:.2e} |"
        )
    ref = result["loss_grad"]["f32 reference values"]
    lines += [
        "",
        "EKD loss (the EKD objective: BSM on z1 and z2 + 3 x (2 - 2cos)) and its gradient w.r.t. the student "
        "parameters; f32 values: " + ", ".join(f"{k} {v:.4f}" for k, v in ref.items()),
        "",
        "| run | loss rel err | loss_cls | loss_cls_free | loss_distill | grad cos | grad rel L2 | "
        "min tensor cos (tensor) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in list(result["loss_grad"].items())[1:]:
        cells = [f"{m[f'{k}_rel']:.1e}" for k in ("loss", "loss_cls", "loss_cls_free", "loss_distill")]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {m['grad_cos']:.6f} | {m['grad_rel']:.2e} | "
            f"{m['grad_min_leaf_cos']:.4f} ({m['grad_min_leaf']}) |"
        )
    skipped = sorted({k for m in result["loss_grad"].values() for k in m.get("grad_skipped", ())})
    if skipped:
        lines.append(f"\nSkipped in the min column (zero true gradient, rounding noise only): {', '.join(skipped)}")
    if "fopro" in result:
        f = result["fopro"]
        kinds = sorted({f"{k[1]} {'/'.join(k[2])}->{'/'.join(k[3])}" for k in f["jaxpr_ffts"]})
        lines += [
            "",
            "FoPro-KD with teacher.dtype=bfloat16 (FPG objective, forward + backward):",
            "",
            f"- FFTs in the jaxpr: {len(f['jaxpr_ffts'])} ({', '.join(kinds)}); `stablehlo.fft` ops: "
            f"{len(f['stablehlo_ffts'])}; all float32/complex64: {f['fft_all_float32']}",
            f"- teacher convolution input dtypes: {', '.join(f['teacher_conv_input_dtypes'])}",
        ]
        for name in ("bf16 teacher", CONTEXT_DITHER):
            r = f[name]
            lines.append(
                f"- {name}: FPG loss rel err {r['fpg_loss_rel']:.1e}; prompt gradient cos "
                f"{r['prompt_grad']['cos']:.4f} (rel L2 {r['prompt_grad']['rel']:.2e}); explore-head "
                f"gradient cos {r['explore_head_grad']['cos']:.6f}; prompt gradient per radial band "
                "(cos, |grad|/|f32 grad|, band's share of |f32 grad|): "
                + "; ".join(
                    f"{b['band']}: {b['cos']:.3f}, {b['norm_ratio']:.2f}, {b['f32_norm_share']:.2f}"
                    for b in r["prompt_grad_bands"]
                )
            )
    lines.append(f"\nwall time {result['wall_s']:.0f} s on {jax.devices()[0].device_kind}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--calib_batches", type=int, default=2, help="batches whose BN moments become the running statistics"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_fopro", action="store_true", help="skip section 4 (the FPG's FFT dtypes and gradient)")
    parser.add_argument(
        "--f32_precision",
        default="highest",
        choices=F32_PRECISIONS,
        help="'highest': true float32 reference on GPU/TPU too (no TF32 / bf16 passes)",
    )
    parser.add_argument(
        "--teacher_artifact",
        default="",
        help="a converted teacher (launch/convert_teacher.py) "
        "to measure with real weights instead of the random, BN-calibrated ResNet-50",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny nets (tests); not ResNet-50/ResNet-18")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise SystemExit(f"--out={args.out}: its directory does not exist")
    result = run_benchmark(
        args.size,
        args.batch,
        args.calib_batches,
        args.seed,
        args.tiny,
        not args.no_fopro,
        args.f32_precision,
        args.teacher_artifact,
    )
    print(format_report(result, args.size, args.batch))
    if args.out:
        meta = dict(
            args=vars(args),
            jax=jax.__version__,
            device=jax.devices()[0].device_kind,
            xla_flags=os.environ.get("XLA_FLAGS", ""),
        )
        with open(args.out + ".tmp", "w") as f:  # no partial file under --out if the dump fails
            json.dump(dict(meta, **result), f, indent=2)
        os.replace(args.out + ".tmp", args.out)
    return result


if __name__ == "__main__":
    main()
