r"""Parameters, FLOPs and CPU speed of every student backbone, in JAX and as deployed (ONNX / StableHLO).

    python -m benchmarks.students --image_size=224 --out=students_224.json    # full size, ~3 min on 2 cores

Per architecture (models/students.py) at `image_size`, for an EKD student with C=8 classes (ISIC-2019)
and D_t=2048 (the MoCo-v2 ResNet-50 teacher):

* parameters of the backbone alone and of the whole EKD student (backbone + fc + p_free + fc_free);
* FLOPs of one inference image (uint8 -> probabilities; only z1 is computed, XLA drops p_free) from
  XLA's cost analysis of the compiled CPU program (``Compiled.cost_analysis()['flops']``; a multiply-add
  counts as 2, so it is about twice the "GFLOPs" = MACs that torchvision/timm model cards quote);
* latency at batch 1 and 32 (median of timed calls after a compile and a warm-up call) and img/s at
  batch 32, for the StableHLO export run by plain JAX (``jax.export.deserialize(...).call``, which
  XLA compiles exactly as ``jax.jit`` of the model) and for the ONNX export (the torch twin,
  foprokd_jax/porting/torch_twin.py) in onnxruntime (CPU provider, default threads);
* the share of the machine other processes used while each runtime was timed (benchmarks/cpu_contention.py):
  the machines this runs on are shared, so figures with a large foreign share are slower than the hardware.

Random weights (speed does not depend on their values). Results: docs/students.md, docs/deployment.md.
"""

import argparse
import json
import time
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from foprokd_jax import deploy, export
from foprokd_jax.models import students
from foprokd_jax.models.ekd_student import EKDStudent

NUM_CLASSES, TEACHER_DIM = 8, 2048
CLASS_NAMES = [f"class_{i}" for i in range(NUM_CLASSES)]


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _time(fn, batch: int, size: int, steps: int) -> dict:
    images = np.random.RandomState(batch).randint(0, 256, (batch, size, size, 3)).astype(np.uint8)
    measured = timing.time_step(lambda: fn(images), steps)
    return {
        "latency_ms": round(1e3 * measured.median_step_s, 2),
        "first_call_s": round(measured.first_call_s, 2),
        "foreign_share": None if measured.region_foreign is None else round(measured.region_foreign, 3),
    }


def benchmark_arch(arch: str, size: int, batches: Sequence[int] = (1, 32), steps: Dict[int, int] = None) -> dict:
    steps = steps or {1: 10, 32: 3}
    student = EKDStudent(num_classes=NUM_CLASSES, teacher_dim=TEACHER_DIM, trunk=arch)
    variables = jax.jit(lambda k: student.init(k, jnp.zeros((1, size, size, 3)), train=False))(jax.random.key(0))
    module = export.InferenceStudent(student, "z1")
    probs = deploy.probabilities_fn(module, variables)
    flops = jax.jit(probs).lower(jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8)).compile().cost_analysis()
    flops = flops[0] if isinstance(flops, (list, tuple)) else flops
    row = {
        "arch": arch,
        "image_size": size,
        "feature_dim": students.FEATURE_DIMS[arch],
        "backbone_params": _count(variables["params"]["trunk"]),
        "ekd_student_params": _count(variables["params"]),
        "gflops_per_image": round(float(flops["flops"]) / 1e9, 3),
    }

    t0 = time.perf_counter()
    exported = jax.export.deserialize(bytearray(deploy.stablehlo_bytes(probs, size)))
    row["stablehlo_export_s"] = round(time.perf_counter() - t0, 2)
    call = jax.jit(exported.call)
    meta = {"image_size": size, "class_names": CLASS_NAMES, "module": {"kwargs": {"trunk": arch}}}
    t0 = time.perf_counter()
    host_variables = jax.tree.map(np.asarray, jax.device_get(variables))
    model = deploy.onnx_model(module, host_variables, size, deploy.deployment_metadata(meta, "onnx"))
    row["onnx_export_s"] = round(time.perf_counter() - t0, 2)
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in batches:
        row[f"jax_b{batch}"] = _time(lambda x: np.asarray(call(x)), batch, size, steps.get(batch, 3))
        row[f"onnx_b{batch}"] = _time(lambda x: deploy.onnx_probs(session, x), batch, size, steps.get(batch, 3))
    for runtime in ("jax", "onnx"):
        largest = max(batches)
        row[f"{runtime}_img_per_s"] = round(1e3 * largest / row[f"{runtime}_b{largest}"]["latency_ms"], 1)
    return row


def markdown(rows: List[dict]) -> str:
    """Two tables: the students (params, FLOPs, img/s) and the deployment latencies."""
    lines = [
        "| student | pooled feature | backbone params | EKD student params | GFLOPs / image (XLA) | "
        "JAX img/s (b32) | ONNX Runtime img/s (b32) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['feature_dim']} | {r['backbone_params'] / 1e6:.2f} M | "
            f"{r['ekd_student_params'] / 1e6:.2f} M | {r['gflops_per_image']:.2f} | {r['jax_img_per_s']} | "
            f"{r['onnx_img_per_s']} |"
        )
    lines += [
        "",
        "| student | StableHLO/JAX b1 (ms) | StableHLO/JAX b32 (ms) | ONNX Runtime b1 (ms) | "
        "ONNX Runtime b32 (ms) | foreign CPU share (JAX b32 / ORT b32) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        shares = " / ".join(
            "n/a" if r[k]["foreign_share"] is None else f"{100 * r[k]['foreign_share']:.0f}%"
            for k in ("jax_b32", "onnx_b32")
        )
        lines.append(
            f"| {r['arch']} | {r['jax_b1']['latency_ms']} | {r['jax_b32']['latency_ms']} | "
            f"{r['onnx_b1']['latency_ms']} | {r['onnx_b32']['latency_ms']} | {shares} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--archs", default=",".join(students.ARCHS))
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    args = parser.parse_args()
    rows = []
    for arch in args.archs.split(","):
        rows.append(benchmark_arch(students.check_arch(arch), args.image_size))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"jax": jax.__version__, "devices": str(jax.devices()), "rows": rows}, f, indent=1)
    print(markdown(rows))


if __name__ == "__main__":
    main()
