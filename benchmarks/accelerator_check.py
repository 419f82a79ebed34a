"""The prepared accelerator check (issue 18 part 2): correctness checks, then the benchmark table, on one GPU/TPU.

    benchmarks/accelerator_check.sh                          # accelerator VM: installs jax[cuda12/tpu], runs this
    python -m benchmarks.accelerator_check --out_dir=accel   # the same without the install (<= ~6 min)
    python -m benchmarks.accelerator_check --dry_run --out_dir=/tmp/dry   # CPU backend, tiny models and shapes

Stages:

1. checks (`accelerator_checks.json`):
   - `step_matches_cpu`: the bsm / ekd / fopro float32 steps on the default backend against the same steps on the
     CPU backend, from the same state and batch, two steps each, under `jax.default_matmul_precision('highest')`
     (GPUs otherwise run float32 convolutions as TF32). Bound: relative difference of every metric <= 1e-3 and of
     the step-1 metrics <= 1e-4 (reduction order differs between backends; Adam's first update is ~lr * sign(g),
     so a gradient that is ~0 may flip sign and move step 2 slightly).
   - `bf16_step`: the same steps with student and teacher in bfloat16: metrics finite, parameters still float32,
     the step-1 loss within 5 % of the float32 one.
   - `device_augment_matches_cpu`: the device augmentation (foprokd_jax/data/device_augment.py) of one batch on
     the accelerator and on the CPU backend: colour ops are integer-exact by construction, geometry may pick a
     neighbouring pixel where the backends' sin/cos differ; bound: <= 0.5 % of the pixels differ
     (tests/test_device_augment.py GEOMETRY_TOLERANCE).
   - `demo`: the demo CLI (configs/demo.py) with BSM for a few steps, from an empty folder, in a subprocess that
     runs beside the other checks (ended before the benchmark starts).
2. benchmark (`accelerator_bench.json`, `accelerator_bench.md`): img/s of the full-size bsm / ekd / fopro steps at
   `--image_size` (224) for each batch size, compute dtype and device augmentation off/on (on = the augmentation
   in front of the step in the same program, as `input.augment_on='device'` runs it), with
   - MFU = XLA cost-analysis FLOPs of one step / median step time / the device's peak dense bfloat16 FLOP/s
     (PEAK_BF16_TFLOPS, by device kind; the same peak for float32 rows, so float32 MFU reads as "fraction of
     the tensor-core peak");
   - memory: XLA's static memory analysis of the compiled step (arguments + outputs + temporaries - aliased), and
     the process's peak device memory so far from `device.memory_stats()` (a running high-water mark: it only
     grows from row to row, so read it as "at most").
   Configurations run in order of importance until `--budget_s` is spent; the rest are listed as skipped.

--dry_run: the CPU backend, tiny models (benchmarks/jax_steps.py TINY_*), 32 px, batch 8, one timed step, the
bf16 check for one method and a reduced grid (each method once, plus one bfloat16 row with device augmentation);
every stage and code path runs, the numbers mean nothing. tests/test_accelerator_check.py runs it.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

# Own FlagValues, not absl's global table: benchmarks/benchmark.py defines --methods/--steps too, and both
# modules are imported by one pytest process.
FLAGS = flags.FlagValues()
flags.DEFINE_bool(
    "dry_run", False, "CPU backend, tiny models and shapes: exercises every stage, measures nothing.", flag_values=FLAGS
)
flags.DEFINE_string("out_dir", "accelerator_check", "Folder for the JSON and Markdown outputs.", flag_values=FLAGS)
flags.DEFINE_list("stages", ["checks", "bench"], "Stages to run: 'checks' and/or 'bench'.", flag_values=FLAGS)
flags.DEFINE_list("methods", ["bsm", "ekd", "fopro"], "Methods whose step is checked and timed.", flag_values=FLAGS)
flags.DEFINE_list("batch_sizes", ["32", "128"], "Global batch sizes of the benchmark.", flag_values=FLAGS)
flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Compute dtypes of the benchmark.", flag_values=FLAGS)
flags.DEFINE_list(
    "device_augment", ["off", "on"], "Device augmentation in the benchmark: 'off' and/or 'on'.", flag_values=FLAGS
)
flags.DEFINE_integer("image_size", 224, "Input size of the benchmark.", flag_values=FLAGS)
flags.DEFINE_integer(
    "steps", 10, "Timed steps per benchmark configuration (after compile + 1 warm-up).", flag_values=FLAGS
)
flags.DEFINE_float(
    "budget_s", 330.0, "Seconds the benchmark stage may take; configurations left are skipped.", flag_values=FLAGS
)
flags.DEFINE_float(
    "deadline_unix",
    0.0,
    "Wall-clock time (seconds since the epoch) by which the benchmark stage stops starting configurations "
    "(benchmarks/accelerator_check.sh passes its start + 8 min); 0 = only --budget_s.",
    flag_values=FLAGS,
)
flags.DEFINE_bool("demo", True, "Run the demo check.", flag_values=FLAGS)

# Peak dense bfloat16 tensor throughput per chip, TFLOP/s, from the vendors' data sheets (no sparsity). Matched
# against jax's `device_kind` by lower-case substring, first match wins (so 'h100 pcie' precedes 'h100').
PEAK_BF16_TFLOPS = (
    ("h100 pcie", 756.0),  # NVIDIA H100 PCIe
    ("h100", 989.4),  # NVIDIA H100 SXM5 (device_kind e.g. 'NVIDIA H100 80GB HBM3')
    ("h200", 989.4),  # NVIDIA H200 SXM (the H100's compute)
    ("gh200", 989.4),
    ("a100", 312.0),  # NVIDIA A100
    ("l4", 121.0),  # NVIDIA L4
    ("v100", 125.0),  # NVIDIA V100 (float16 tensor cores; no bfloat16)
    ("t4", 65.0),  # NVIDIA T4 (float16 tensor cores; no bfloat16)
    ("tpu v6", 918.0),  # TPU v6e (Trillium)
    ("tpu v5 lite", 197.0),  # TPU v5e
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),
    ("tpu v4", 275.0),
    ("tpu v3", 123.0),
    ("tpu v2", 45.0),
)
CHECK_BOUNDS = {"step1_rel": 1e-4, "step2_rel": 1e-3, "bf16_loss_rel": 0.05}
DRY = dict(image_size=32, batch_sizes=[8], steps=1, check_size=32, check_batch=8)
# The dry run's benchmark rows: (method, dtype, device augmentation): each step once, and the bf16 + augment path.
DRY_GRID = (
    ("bsm", "float32", "off"),
    ("ekd", "float32", "off"),
    ("fopro", "float32", "off"),
    ("bsm", "bfloat16", "on"),
)
DRY_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
AUGMENT_MAX_DIFFERING = 5e-3
CHECK_SIZE, CHECK_BATCH = 64, 8


def peak_tflops(device_kind: str):
    """The device's peak dense bfloat16 TFLOP/s from PEAK_BF16_TFLOPS, or None for an unknown kind (or a CPU)."""
    kind = device_kind.lower()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in kind:
            return tflops
    return None


def _rel(a, b) -> float:
    import numpy as np

    a, b = float(np.asarray(a)), float(np.asarray(b))
    return abs(a - b) / max(abs(b), 1e-12)


def _run_steps(step, state, teacher_vars, batch, n):
    """`n` steps from `state`; the metrics of each as host floats."""
    import jax

    out = []
    for _ in range(n):
        state, metrics = step(state, teacher_vars, batch)
        out.append({k: float(v) for k, v in jax.device_get(metrics).items() if getattr(v, "ndim", 1) == 0})
    return state, out


_BUILDS = {}
_COMPILED = {}


def fresh_step(method: str, size: int, batch: int, dtype: str = "float32", tiny: bool = False, cpu: bool = False):
    """(step, state, teacher_vars, batch, mesh) on one device, from a cache of built steps: each call returns new
    device copies of the same initial state (the step donates its state), so a check or benchmark row that needs a
    configuration already built reuses its models. cpu=True: on the CPU backend."""
    import jax
    import numpy as np

    from benchmarks import jax_steps
    from foprokd_jax import parallel

    key = _build_key(method, size, batch, dtype, tiny, cpu)
    if key not in _BUILDS:
        devices = jax.devices("cpu") if key[-1] else None
        built = jax_steps.build_step(method, size, batch, num_devices=1, dtype=dtype, tiny=tiny, devices=devices)
        host = jax.tree.map(np.asarray, jax.device_get((built.state, built.teacher_vars, built.batch)))
        _BUILDS[key] = (built.step, built.mesh, host)
    step, mesh, (state, teacher_vars, batch_) = _BUILDS[key]
    return (
        step,
        parallel.replicate(state, mesh),
        parallel.replicate(teacher_vars, mesh),
        parallel.host_batch_to_global(batch_, mesh),
        mesh,
    )


def _build_key(method, size, batch, dtype, tiny, cpu):
    import jax

    # On a CPU backend (the dry run) the "CPU" side is the same build as the default one.
    return (method, size, batch, dtype, tiny, cpu and jax.default_backend() != "cpu")


def compiled_step(
    method: str,
    size: int,
    batch: int,
    dtype: str = "float32",
    tiny: bool = False,
    cpu: bool = False,
    augment: bool = False,
    highest: bool = False,
):
    """(compiled, compile_s, state, teacher_vars, batch, mesh): `fresh_step`'s arrays and its step compiled once
    per configuration (a check and a benchmark row of the same configuration share the executable).

    augment: the step behind the device augmentation (`input.augment_on='device'`). highest: float32
    matmuls/convolutions at 'highest' precision off the CPU (GPUs otherwise run them as TF32); a no-op on a CPU,
    where it would only compile the same program again."""
    import contextlib

    import jax

    step, state, teacher_vars, batch_, mesh = fresh_step(method, size, batch, dtype, tiny, cpu)
    highest = highest and jax.default_backend() != "cpu"
    key = _build_key(method, size, batch, dtype, tiny, cpu) + (augment, highest)
    if key not in _COMPILED:
        program = with_device_augment(step, mesh) if augment else step
        precision = jax.default_matmul_precision("highest") if highest else contextlib.nullcontext()
        t0 = time.perf_counter()
        with precision:
            compiled = program.lower(state, teacher_vars, batch_).compile()
        _COMPILED[key] = (compiled, time.perf_counter() - t0)
    compiled, compile_s = _COMPILED[key]
    return compiled, compile_s, state, teacher_vars, batch_, mesh


def check_step_matches_cpu(method: str, size: int, batch: int, tiny: bool) -> dict:
    """The float32 step on the default backend vs the CPU backend, same initial state and batch, two steps."""
    t0 = time.perf_counter()
    step, _, state, teacher_vars, batch_, mesh = compiled_step(method, size, batch, tiny=tiny, highest=True)
    _, acc_metrics = _run_steps(step, state, teacher_vars, batch_, 2)
    cpu_step, _, cpu_state, cpu_tv, cpu_batch, cpu_mesh = compiled_step(
        method, size, batch, tiny=tiny, cpu=True, highest=True
    )
    _, cpu_metrics = _run_steps(cpu_step, cpu_state, cpu_tv, cpu_batch, 2)
    rel = [max(_rel(a[k], c[k]) for k in c) for a, c in zip(acc_metrics, cpu_metrics)]
    ok = rel[0] <= CHECK_BOUNDS["step1_rel"] and rel[1] <= CHECK_BOUNDS["step2_rel"]
    return {
        "check": "step_matches_cpu",
        "method": method,
        "ok": bool(ok),
        "max_rel_step1": rel[0],
        "max_rel_step2": rel[1],
        "device_metrics": acc_metrics,
        "cpu_metrics": cpu_metrics,
        "devices": [str(mesh.devices.flat[0]), str(cpu_mesh.devices.flat[0])],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def check_bf16_step(method: str, size: int, batch: int, tiny: bool) -> dict:
    """The bfloat16 step: finite metrics, float32 parameters, loss close to the float32 step's."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    t0 = time.perf_counter()
    compiled, _, *args32, _ = compiled_step(method, size, batch, tiny=tiny)
    _, m32 = _run_steps(compiled, *args32, 1)
    compiled, _, *args16, _ = compiled_step(method, size, batch, dtype="bfloat16", tiny=tiny)
    state, m16 = _run_steps(compiled, *args16, 1)
    finite = all(np.isfinite(v) for v in m16[0].values())
    params_f32 = all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    loss_rel = _rel(m16[0]["loss"], m32[0]["loss"])
    ok = finite and params_f32 and loss_rel <= CHECK_BOUNDS["bf16_loss_rel"]
    return {
        "check": "bf16_step",
        "method": method,
        "ok": bool(ok),
        "finite": bool(finite),
        "params_float32": bool(params_f32),
        "loss_rel_to_float32": loss_rel,
        "bf16_metrics": m16[0],
        "float32_metrics": m32[0],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def start_demo(dry_run: bool) -> dict:
    """Starts the demo CLI with BSM for a few steps in an empty folder (smaller data in a dry run); `finish_demo`
    collects it. It runs beside the in-process checks (their timings do not matter) and must end before the
    benchmark starts. On a GPU it must not preallocate: this process already holds most of the memory."""
    config = os.path.join(ROOT, "configs", "demo.py") + (":methods=bsm,steps=2" if dry_run else ":methods=bsm,steps=24")
    args = [sys.executable, os.path.join(ROOT, "launch", "train.py"), f"--config={config}", "--workdir=demo"]
    if dry_run:
        args += [
            "--config.demo_data.n_max=16",
            "--config.demo_data.val_per_class=2",
            "--config.demo_data.test_per_class=2",
            "--config.eval.head_min=4",
            "--config.eval.tail_max=1",
            "--config.eval_every_steps=2",
            "--config.log_every_steps=1",
            # On CPU 'auto' means host augmentation: exercise the device path the accelerator takes.
            "--config.input.augment_on=device",
        ]
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
    )
    tmp = tempfile.mkdtemp(prefix="accelerator_check_demo_")
    stderr = open(os.path.join(tmp, "stderr.txt"), "w")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp)
    return {"proc": proc, "tmp": tmp, "stderr": stderr, "t0": time.perf_counter()}


def finish_demo(demo: dict) -> dict:
    """Waits for `start_demo`'s run; ok = exit 0 and a results.json."""
    import shutil

    returncode = demo["proc"].wait()
    demo["stderr"].close()
    results = os.path.join(demo["tmp"], "demo", "bsm", "results.json")
    ok = returncode == 0 and os.path.exists(results)
    summary, stderr_tail = {}, ""
    if ok:
        with open(results) as f:
            summary = {k: v for k, v in json.load(f).items() if isinstance(v, (int, float, str))}
    else:
        with open(demo["stderr"].name) as f:
            stderr_tail = f.read()[-2000:]
    shutil.rmtree(demo["tmp"], ignore_errors=True)
    return {
        "check": "demo",
        "ok": bool(ok),
        "returncode": returncode,
        "seconds": round(time.perf_counter() - demo["t0"], 1),
        "results_scalars": summary,
        "stderr_tail": stderr_tail,
    }


def check_device_augment_matches_cpu(size: int, batch: int) -> dict:
    """The device augmentation of one batch on the default backend vs the CPU backend."""
    import jax
    import numpy as np

    from foprokd_jax.data import device_augment

    t0 = time.perf_counter()
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    augment = jax.jit(device_augment.augment_batch, static_argnums=1)
    acc = np.asarray(augment(jax.device_put(images, jax.devices()[0]), 0, 7))
    cpu = np.asarray(augment(jax.device_put(images, jax.devices("cpu")[0]), 0, 7))
    differing = float(np.mean(np.any(acc != cpu, axis=-1)))
    return {
        "check": "device_augment_matches_cpu",
        "ok": bool(differing <= AUGMENT_MAX_DIFFERING),
        "fraction_of_pixels_differing": differing,
        "bound": AUGMENT_MAX_DIFFERING,
        "changed_by_augmentation": bool((acc != images).any()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_checks(dry_run: bool, methods) -> list:
    size, batch = (DRY["check_size"], DRY["check_batch"]) if dry_run else (CHECK_SIZE, CHECK_BATCH)
    rows = []
    demo = start_demo(dry_run) if FLAGS.demo else None
    for method in methods:
        rows.append(check_step_matches_cpu(method, size, batch, tiny=dry_run))
    # The dry run checks bfloat16 on the method of its bfloat16 benchmark row (one build for both).
    dry_bf16 = [m for m, d, _ in DRY_GRID if d == "bfloat16" and m in methods][:1]
    for method in dry_bf16 if dry_run else methods:
        rows.append(check_bf16_step(method, size, batch, tiny=dry_run))
    rows.append(check_device_augment_matches_cpu(size, batch))
    if demo:
        rows.append(finish_demo(demo))
    return rows


def with_device_augment(step, mesh):
    """`step` behind the device augmentation, as `input.augment_on='device'` builds it."""
    from foprokd_jax.methods import device_augmentation

    return device_augmentation.with_device_augmentation(step, mesh, seed=0)


def memory_of(compiled) -> dict:
    """XLA's static memory analysis of a compiled step, MiB (None where the backend gives none)."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        mem = None
    if mem is None:
        return {"xla_memory_mib": None}
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    return {"xla_memory_mib": round(total / 2**20, 1), "xla_temp_mib": round(mem.temp_size_in_bytes / 2**20, 1)}


def device_peak_mib():
    """The process's peak device memory so far from memory_stats() (None on backends without it, e.g. CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**20, 1)


def bench_one(method, size, batch, dtype, augment, steps, tiny) -> dict:
    import jax

    from benchmarks import jax_steps, timing

    compiled, compile_s, state, teacher_vars, batch_, mesh = compiled_step(
        method, size, batch, dtype=dtype, tiny=tiny, augment=augment == "on"
    )
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], teacher_vars, batch_)
        jax.block_until_ready(metrics)

    timed = timing.time_step(run, steps)
    cost = jax_steps.cost_of(compiled)
    kind = jax.devices()[0].device_kind
    peak = peak_tflops(kind)
    step_s = timed.median_step_s
    mfu = cost["flops_per_step"] / step_s / (peak * 1e12) if peak and cost["flops_per_step"] else None
    return {
        "method": method,
        "image_size": size,
        "batch_size": batch,
        "dtype": dtype,
        "device_augment": augment,
        "devices": mesh.devices.size,
        "device_kind": kind,
        "backend": jax.default_backend(),
        "img_per_s": round(batch / step_s, 1),
        "step_ms": round(1e3 * step_s, 2),
        "compile_s": round(compile_s, 2),
        **cost,
        "tflops_per_s": None if not cost["flops_per_step"] else round(cost["flops_per_step"] / step_s / 1e12, 2),
        "peak_bf16_tflops": peak,
        "mfu": None if mfu is None else round(mfu, 4),
        **memory_of(compiled),
        "device_peak_mib_so_far": device_peak_mib(),
        "jax": jax.__version__,
    }


def bench_grid(methods, batch_sizes, dtypes, augments, dry_run: bool = False):
    """(method, batch, dtype, augment) in order of importance, so that a budget cut drops the least informative rows.

    The first entry of each list is the main setting (batch 32, bfloat16, augmentation off): first every method
    there, then every row that changes one setting (augmentation on, float32, batch 128, in that order), then two,
    then three. Within a group the methods stay together, so bsm / ekd / fopro of one setting are side by side."""
    if dry_run:
        return [(m, batch_sizes[0], d, a) for m, d, a in DRY_GRID if m in methods]
    grid = [
        (ai, di, bi, m)
        for ai in range(len(augments))
        for di in range(len(dtypes))
        for bi in range(len(batch_sizes))
        for m in methods
    ]
    # Key: how many settings differ from the main one; then which (augmentation before dtype before batch); then
    # the entries in list order. sort is stable, so the methods keep their order inside a setting.
    grid.sort(key=lambda r: (sum(i > 0 for i in r[:3]), r[0] == 0, r[1] == 0, r[2] == 0, r[:3]))
    return [(m, batch_sizes[bi], dtypes[di], augments[ai]) for ai, di, bi, m in grid]


def run_bench(dry_run: bool) -> list:
    size = DRY["image_size"] if dry_run else FLAGS.image_size
    batch_sizes = DRY["batch_sizes"] if dry_run else [int(b) for b in FLAGS.batch_sizes]
    steps = DRY["steps"] if dry_run else FLAGS.steps
    rows, start, longest_row_s = [], time.perf_counter(), 0.0
    grid = bench_grid(FLAGS.methods, batch_sizes, FLAGS.dtypes, FLAGS.device_augment, dry_run)
    for method, batch, dtype, augment in grid:
        base = {"method": method, "image_size": size, "batch_size": batch, "dtype": dtype, "device_augment": augment}
        reason = out_of_time(time.perf_counter() - start, longest_row_s, time.time())
        if reason:
            rows.append({**base, "skipped": reason})
            continue
        t0 = time.perf_counter()
        try:
            rows.append(bench_one(method, size, batch, dtype, augment, steps, tiny=dry_run))
        except Exception as e:  # e.g. out of memory at batch 128: record it, go on
            rows.append({**base, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        longest_row_s = max(longest_row_s, time.perf_counter() - t0)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def out_of_time(elapsed_s: float, longest_row_s: float, now_unix: float) -> str:
    """Why the next benchmark row must not start ('' if it may): --budget_s spent, or --deadline_unix closer than
    the longest row so far (a row is mostly its compile, so the longest one is a fair guess of the next)."""
    if elapsed_s > FLAGS.budget_s:
        return f"--budget_s={FLAGS.budget_s:g} spent"
    if FLAGS.deadline_unix and now_unix + longest_row_s > FLAGS.deadline_unix:
        return "--deadline_unix reached (the script's 8-minute limit)"
    return ""


def markdown_table(rows, checks) -> str:
    def fmt(v, spec="{}"):
        return "-" if v is None else spec.format(v)

    lines = [
        "| method | batch | dtype | device aug | img/s | step ms | TFLOP/s | MFU | XLA mem MiB | peak MiB (so far) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "img_per_s" not in r:
            lines.append(
                f"| {r['method']} | {r['batch_size']} | {r['dtype']} | {r['device_augment']} | "
                f"{r.get('skipped') or r.get('error')} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['method']} | {r['batch_size']} | {r['dtype']} | {r['device_augment']} | {r['img_per_s']} "
            f"| {r['step_ms']} | {fmt(r['tflops_per_s'])} | {fmt(r['mfu'], '{:.1%}')} | "
            f"{fmt(r['xla_memory_mib'])} | {fmt(r['device_peak_mib_so_far'])} |"
        )
    head = []
    if rows and "device_kind" in rows[0]:
        head.append(
            f"Device: {rows[0]['device_kind']} ({rows[0]['backend']}), jax {rows[0]['jax']}, "
            f"{rows[0]['image_size']} px; MFU against {fmt(rows[0]['peak_bf16_tflops'])} TFLOP/s bf16 peak."
        )
    if checks:
        head.append(
            "Checks: "
            + ", ".join(
                f"{c['check']}{'/' + c['method'] if 'method' in c else ''}={'ok' if c['ok'] else 'FAIL'}"
                for c in checks
            )
            + "."
        )
    return "\n\n".join(head + ["\n".join(lines)]) + "\n"


def main(argv):
    del argv
    if FLAGS.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"  # this process and the demo's subprocess
        # Compile time is most of a dry run; its numbers mean nothing, so let XLA:CPU skip LLVM's costly passes.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + DRY_XLA_FLAGS).strip()
        import jax

        jax.config.update("jax_platforms", "cpu")
    import jax

    for name, values, allowed in (
        ("stages", FLAGS.stages, {"checks", "bench"}),
        ("methods", FLAGS.methods, {"bsm", "ekd", "fopro"}),
        ("dtypes", FLAGS.dtypes, {"float32", "bfloat16"}),
        ("device_augment", FLAGS.device_augment, {"off", "on"}),
    ):
        unknown = sorted(set(values) - allowed)
        if unknown:
            print(f"error: --{name} has unknown entries {unknown} (allowed: {sorted(allowed)})", file=sys.stderr)
            sys.exit(1)
    if not all(b.isdigit() and int(b) > 0 for b in FLAGS.batch_sizes):
        print(f"error: --batch_sizes must be positive integers, got {FLAGS.batch_sizes}", file=sys.stderr)
        sys.exit(1)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    print(f"backend {jax.default_backend()}, devices {jax.devices()}", flush=True)
    start = time.perf_counter()
    checks, rows = [], []
    if "checks" in FLAGS.stages:
        checks = run_checks(FLAGS.dry_run, FLAGS.methods)
        with open(os.path.join(FLAGS.out_dir, "accelerator_checks.json"), "w") as f:
            json.dump(checks, f, indent=1)
        for c in checks:
            print(f"check {c['check']} {c.get('method', '')}: {'ok' if c['ok'] else 'FAIL'} ({c['seconds']} s)")
        print(f"checks: {time.perf_counter() - start:.0f} s", flush=True)
    if "bench" in FLAGS.stages:
        rows = run_bench(FLAGS.dry_run)
        with open(os.path.join(FLAGS.out_dir, "accelerator_bench.json"), "w") as f:
            json.dump({"dry_run": FLAGS.dry_run, "rows": rows}, f, indent=1)
        table = markdown_table(rows, checks)
        with open(os.path.join(FLAGS.out_dir, "accelerator_bench.md"), "w") as f:
            f.write(table)
        print(table)
        print(f"checks + benchmark: {time.perf_counter() - start:.0f} s", flush=True)
    failed = [c for c in checks if not c["ok"]]
    if failed:
        print(
            f"error: {len(failed)} accelerator check(s) failed: "
            + ", ".join(f"{c['check']} {c.get('method', '')}" for c in failed),
            file=sys.stderr,
        )
        sys.exit(1)


def run():
    try:
        argv = FLAGS(sys.argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    main(argv)


if __name__ == "__main__":
    run()
