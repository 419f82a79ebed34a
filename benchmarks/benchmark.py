"""Throughput benchmark: our `bsm`/`ekd`/`fopro` train steps, a PyTorch EKD step, and the input pipeline.

    python -m benchmarks.benchmark                                   # 224 and 112, batch 32, + torch, table
    python -m benchmarks.benchmark --image_sizes=112 --steps=5 --out=bench.json
    python -m benchmarks.benchmark --image_sizes=224 --methods=ekd,fopro --xla_flag_sets=cpu_defaults,none
    python -m benchmarks.benchmark --torch=false --pipeline=false --isolate=false   # the old in-process mode
    taskset -c 1 python -m benchmarks.benchmark --image_sizes=112   # one pinned core: steadier on a shared machine

Every configuration runs in a fresh process (`--isolate`, default): XLA reads XLA_FLAGS once per process,
and peak memory (RSS) is then per configuration. Each reports compile + first step, then the median over
`--steps` timed steps after one warm-up of: wall time, CPU time of the process, and the share of the
machine OTHER processes used meanwhile (/proc/stat vs /proc/self/stat, benchmarks/cpu_contention.py). A
configuration whose foreign share exceeds `--contention_threshold` is marked CONTENDED instead of being
averaged in silently. The JAX steps are the real step functions with full-size models (ResNet-18 student
with the EKD heads, ResNet-50 teacher with random weights, plus the FPG for fopro: speed does not depend
on the values), on all local devices. The PyTorch reference is benchmarks/torch_ekd.py (channels_last,
eager, `--torch_threads`). The pipeline figure is img/s of the grain train iterator with the 'skin'
augmentation on synthetic images prepared at each size, and img/s per core of CPU it used.
Output: a markdown table (docs/performance.md), the issue-8 target checks, and optionally `--out` JSON.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (benchmarks/ is not installed)

from absl import app, flags  # noqa: E402

from benchmarks import pipeline_timing  # noqa: E402

flags.DEFINE_list("image_sizes", ["224", "112"], "Square input sizes to benchmark.")
flags.DEFINE_list("methods", ["bsm", "ekd", "fopro"], "Methods whose JAX train step is timed.")
flags.DEFINE_string("fpg_variant", "spectrum", "FPG variant for the 'fopro' step.")
flags.DEFINE_list(
    "fpg_update_every",
    ["1"],
    "config.fpg.update_every values timed for the 'fopro' step (k: the FPG "
    "trains on every k-th step; the mean step time over k consecutive steps is reported).",
)
flags.DEFINE_string(
    "compilation_cache",
    "",
    "Persistent compilation cache folder for the JAX steps ('' = none). "
    "Run twice with the same folder: the second run's 'compile s' is the cached first step.",
)
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps per configuration (after compile + 1 warm-up).")
flags.DEFINE_integer(
    "pipeline_batches", 8, "Batches drawn from the input pipeline per size (at least; and for at least 3 s)."
)
flags.DEFINE_integer("worker_count", 0, "grain worker processes for the pipeline benchmark.")
flags.DEFINE_list(
    "pipeline_augment_on",
    ["host", "device"],
    "Pipeline rows by `input.augment_on`: 'host' = read + PIL 'skin' augmentation + batch, 'device' = read + "
    "batch only (the augmentation then runs inside the train step).",
)
flags.DEFINE_string("out", "", "Optional JSON file for the results.")
flags.DEFINE_bool(
    "torch",
    True,
    "Also time the PyTorch EKD step (benchmarks/torch_ekd.py); skipped with a note when torch is not installed.",
)
flags.DEFINE_integer(
    "torch_threads",
    0,
    "torch.set_num_threads for the PyTorch step; 0 = the cores this "
    "process may run on (2 on the project's CPU machine).",
)
flags.DEFINE_bool("pipeline", True, "Also time the input pipeline.")
flags.DEFINE_list(
    "xla_flag_sets",
    ["cpu_defaults"],
    "XLA flag sets for the JAX steps: 'cpu_defaults' "
    "(foprokd_jax.xla_flags.apply_cpu_defaults) and/or 'none' (XLA's own defaults).",
)
flags.DEFINE_bool("isolate", True, "Run each configuration in a fresh process.")
flags.DEFINE_float("contention_threshold", 0.08, "Foreign CPU share above which a run is marked CONTENDED.")
flags.DEFINE_string("run_one", "", "Internal: run one configuration (JSON) and print its result row.")
FLAGS = flags.FLAGS

XLA_FLAG_SETS = ("cpu_defaults", "none")
RESULT_PREFIX = "BENCH_RESULT "


def apply_xla_flag_set(name: str) -> None:
    """Sets up XLA_FLAGS for one of XLA_FLAG_SETS; must run before JAX creates its backends."""
    from foprokd_jax import xla_flags

    if name == "cpu_defaults":
        xla_flags.apply_cpu_defaults()
    elif name != "none":
        raise ValueError(f"--xla_flag_sets entry {name!r} is not one of {XLA_FLAG_SETS}")


def bench_step(
    method, size, batch_size, steps, threshold, fpg_variant="spectrum", fpg_update_every=1, compilation_cache=""
):
    import jax

    from benchmarks import jax_steps, timing
    from foprokd_jax import compilation_cache as cache_lib
    from foprokd_jax import xla_flags

    if compilation_cache:
        cache_lib.enable(compilation_cache)
    built = jax_steps.build_step(method, size, batch_size, fpg_variant, fpg_update_every=fpg_update_every)
    # Compile ahead of time once: the same executable is timed, and it tells us the FLOPs and which
    # library runs the convolutions, without a second compilation.
    t0 = time.perf_counter()
    compiled = built.step.lower(*built.args()).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": built.state}

    def run():
        holder["state"], metrics = compiled(holder["state"], built.teacher_vars, built.batch)
        jax.block_until_ready(metrics)

    # With update_every=k the step's cost cycles with period k: time whole cycles, report the mean step.
    timed = timing.time_step(run, steps, calls_per_step=fpg_update_every if method == "fopro" else 1)
    row = {
        "framework": "jax",
        "method": method,
        "image_size": size,
        "batch_size": batch_size,
        "devices": built.mesh.devices.size,
        "device_kind": jax.devices()[0].device_kind,
        **timed.summary(batch_size, threshold),
        "compile_s": round(compile_s + timed.first_call_s, 2),
        "compile_only_s": round(compile_s, 2),
        **jax_steps.cost_of(compiled),
        "conv_backends": xla_flags.count_conv_backends(compiled.as_text()),
        "xla_flags_env": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "fpg_update_every": fpg_update_every if method == "fopro" else None,
        "compilation_cache": compilation_cache or None,
        "peak_rss_mib": timing.peak_rss_mib(),
    }
    # Kept for readers of the earlier JSON format.
    row["compile_plus_first_step_s"], row["step_s"] = row["compile_s"], round(timed.median_step_s, 4)
    return row


def bench_torch(size, batch_size, steps, threshold, threads):
    from benchmarks import timing, torch_ekd

    threads = threads or len(os.sched_getaffinity(0))
    step, info = torch_ekd.build_ekd_step(size, batch_size, threads=threads)
    timed = timing.time_step(step, steps)
    return {
        "framework": "torch",
        "method": "ekd",
        "image_size": size,
        "batch_size": batch_size,
        "config": f"{info['memory_format']}, {info['threads']} threads, {info['mode']}",
        **info,
        **timed.summary(batch_size, threshold),
        "peak_rss_mib": timing.peak_rss_mib(),
    }


def run_config(spec: dict) -> dict:
    """One measurement in this process; `spec['kind']` is 'jax_step', 'torch_step' or 'pipeline'."""
    threshold = spec["threshold"]
    if spec["kind"] == "jax_step":
        row = bench_step(
            spec["method"],
            spec["size"],
            spec["batch_size"],
            spec["steps"],
            threshold,
            spec.get("fpg_variant", "spectrum"),
            spec.get("fpg_update_every", 1),
            spec.get("compilation_cache", ""),
        )
        row["config"] = f"xla={spec['xla']}, {row['devices']} device(s), {len(os.sched_getaffinity(0))} core(s)"
        return row
    if spec["kind"] == "torch_step":
        return bench_torch(spec["size"], spec["batch_size"], spec["steps"], threshold, spec["threads"])
    if spec["kind"] == "pipeline":
        return pipeline_timing.bench_pipeline(
            spec["size"],
            spec["batch_size"],
            spec["batches"],
            spec["worker_count"],
            threshold,
            spec.get("augment_on", "host"),
        )
    raise ValueError(f"unknown benchmark kind {spec['kind']!r}")


def run_isolated(spec: dict) -> dict:
    """`run_config(spec)` in a fresh interpreter; returns its row (or an 'error' row)."""
    env = dict(os.environ)
    if spec.get("xla") == "none":
        env["FOPROKD_XLA_CPU_DEFAULTS"] = "0"
    cmd = [sys.executable, "-m", "benchmarks.benchmark", f"--run_one={json.dumps(spec)}"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}", **spec}


def plan(sizes, torch_available: bool) -> list:
    """The configurations to measure, in order; adjacent JAX and torch runs make the fairest ratios."""
    specs = []
    for size in sizes:
        common = dict(size=size, batch_size=FLAGS.batch_size, steps=FLAGS.steps, threshold=FLAGS.contention_threshold)
        for xla in FLAGS.xla_flag_sets:
            for method in FLAGS.methods:
                for k in FLAGS.fpg_update_every if method == "fopro" else ["1"]:
                    specs.append(
                        dict(
                            kind="jax_step",
                            method=method,
                            xla=xla,
                            fpg_variant=FLAGS.fpg_variant,
                            fpg_update_every=int(k),
                            compilation_cache=FLAGS.compilation_cache,
                            **common,
                        )
                    )
        if FLAGS.torch and torch_available:
            specs.append(dict(kind="torch_step", threads=FLAGS.torch_threads, **common))
        for augment_on in FLAGS.pipeline_augment_on if FLAGS.pipeline else []:
            specs.append(
                dict(
                    kind="pipeline",
                    batches=FLAGS.pipeline_batches,
                    worker_count=FLAGS.worker_count,
                    size=size,
                    batch_size=FLAGS.batch_size,
                    threshold=FLAGS.contention_threshold,
                    augment_on=augment_on,
                )
            )
    return specs


def describe(row: dict) -> str:
    if "error" in row:
        return f"{row['kind']} {row.get('method', '')} {row['size']}px FAILED: {row['error']}"
    if "framework" in row:
        return (
            f"{row['framework']} {row['method']} {row['image_size']}px bs{row['batch_size']}: "
            f"{row['img_per_s']:.2f} img/s ({row['step_ms']:.0f} ms/step; compile+first {row['compile_s']:.1f} s;"
            f" foreign CPU {row['foreign_share']})"
        )
    return (
        f"input pipeline {row['image_size']}px (augment_on={row.get('augment_on', 'host')}): "
        f"{row['img_per_s']:.1f} img/s, "
        f"{row['img_per_s_per_core']} img/s per core (foreign CPU {row['foreign_share']})"
    )


def main(argv):
    del argv
    from benchmarks import report
    from foprokd_jax import library_logs

    library_logs.quiet_library_logs()
    if FLAGS.run_one:
        spec = json.loads(FLAGS.run_one)
        if spec["kind"] == "jax_step":
            apply_xla_flag_set(spec["xla"])
        print(RESULT_PREFIX + json.dumps(run_config(spec)), flush=True)
        return
    unknown = sorted(set(FLAGS.pipeline_augment_on) - {"host", "device"})
    if unknown:
        raise app.UsageError(f"--pipeline_augment_on entries {unknown} are not 'host' or 'device'")
    for name in FLAGS.xla_flag_sets:
        if name not in XLA_FLAG_SETS:
            raise app.UsageError(f"--xla_flag_sets entry {name!r} is not one of {XLA_FLAG_SETS}")
    if not FLAGS.isolate and len(FLAGS.xla_flag_sets) > 1:
        raise app.UsageError(
            "--isolate=false runs everything in one process, where XLA_FLAGS is read once: "
            "give a single --xla_flag_sets entry"
        )
    try:
        import torch  # noqa: F401  (optional: requirements-test.txt)

        torch_available = True
    except ImportError:
        torch_available = False
        if FLAGS.torch:
            print("torch is not installed: the PyTorch EKD reference is skipped.", flush=True)
    if not FLAGS.isolate:
        apply_xla_flag_set(FLAGS.xla_flag_sets[0])
    import jax

    print(
        f"JAX {jax.__version__}; {os.cpu_count()} CPU cores; XLA_FLAGS (parent)={os.environ.get('XLA_FLAGS', '')!r}",
        flush=True,
    )
    rows = []
    for spec in plan([int(s) for s in FLAGS.image_sizes], torch_available):
        row = run_isolated(spec) if FLAGS.isolate else run_config(spec)
        rows.append(row)
        print(describe(row), flush=True)
    step_rows = [r for r in rows if "framework" in r]
    pipeline_rows = [r for r in rows if "error" not in r and "framework" not in r]
    tables = [report.step_table(step_rows)]
    if pipeline_rows:
        tables.append(report.pipeline_table(pipeline_rows, step_rows))
    checks = report.target_checks(step_rows, pipeline_rows)
    note = report.contention_note(step_rows + pipeline_rows, FLAGS.contention_threshold)
    print("\n" + "\n\n".join(tables) + "\n\n" + note + "\n\nIssue-8 targets:\n" + "\n".join(checks), flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(
                {
                    "steps": [r for r in step_rows if r["framework"] == "jax"],
                    "torch": [r for r in step_rows if r["framework"] == "torch"],
                    "pipeline": pipeline_rows,
                    "errors": [r for r in rows if "error" in r],
                    "targets": checks,
                    "contention": note,
                },
                f,
                indent=2,
            )


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python -m benchmarks.benchmark`."""
    app.run(main)


if __name__ == "__main__":
    run()
