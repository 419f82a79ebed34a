"""Where the time of one of our train steps goes on XLA:CPU: jax.profiler trace, grouped by what each op is.

    .venv/bin/python -m benchmarks.profile_step --method=ekd --size=112 --batch=8 --steps=2
    .venv/bin/python -m benchmarks.profile_step --method=ekd --size=224 --batch=32 --xla=none

Traces `--steps` calls of the compiled step (after compile and one warm-up), reads the trace with
`jax.profiler.ProfileData`, and sums the duration of every XLA:CPU thunk (one per HLO instruction, with
its `hlo_op` name) into the categories of benchmarks/hlo_index.py: convolutions by direction (fwd, dX,
dW), model (teacher / student / prompt) and library (YNNPACK, oneDNN, Eigen), dense layers, BN and
elementwise fusions, copies, max-pool, FFT. Independent thunks can run at the same time on different
cores, so the thunk sum can exceed the wall time; the table gives each category's share of the sum.
Also prints XLA's FLOP count for the step (cost analysis) and the contention measured during the trace.
"""

import argparse
import collections
import glob
import json
import os
import tempfile
import time


def thunk_times(trace_dir: str) -> dict:
    """hlo_op name -> (total duration in ms, number of executions) from the newest trace under trace_dir."""
    from jax.profiler import ProfileData

    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb trace under {trace_dir}")
    totals = collections.defaultdict(lambda: [0.0, 0])
    for plane in ProfileData.from_file(paths[-1]).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[str(stats["hlo_op"])][0] += event.duration_ns / 1e6
                    totals[str(stats["hlo_op"])][1] += 1
    return {name: tuple(v) for name, v in totals.items()}


def group(times: dict, categories: dict, steps: int) -> list:
    """[(category, ms per step, share of the thunk sum, ops)] sorted by time, largest first."""
    per = collections.defaultdict(lambda: [0.0, 0])
    for name, (ms, _) in times.items():
        key = categories.get(name, "other")
        per[key][0] += ms / steps
        per[key][1] += 1
    total = sum(ms for ms, _ in per.values()) or 1.0
    return sorted(((k, ms, ms / total, n) for k, (ms, n) in per.items()), key=lambda r: -r[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="ekd", choices=("bsm", "ekd", "fopro"))
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--xla",
        default="cpu_defaults",
        choices=("cpu_defaults", "none"),
        help="XLA flag set: foprokd_jax.xla_flags.apply_cpu_defaults() or XLA's defaults",
    )
    parser.add_argument("--devices", type=int, default=None, help="mesh size (default: all local devices)")
    parser.add_argument("--out", default="", help="optional JSON file for the grouped profile")
    args = parser.parse_args(argv)

    from foprokd_jax import xla_flags

    if args.xla == "cpu_defaults":
        xla_flags.apply_cpu_defaults()
    import jax

    from benchmarks import cpu_contention, hlo_index, jax_steps

    built = jax_steps.build_step(args.method, args.size, args.batch, num_devices=args.devices)
    t0 = time.perf_counter()
    compiled = built.step.lower(*built.args()).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    state = built.state

    def run(state):
        state, metrics = compiled(state, built.teacher_vars, built.batch)
        jax.block_until_ready(metrics)
        return state

    state = run(run(state))  # first run + warm-up
    with tempfile.TemporaryDirectory(prefix="foprokd_profile_") as trace_dir:
        before = cpu_contention.snapshot()
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                state = run(state)
        after = cpu_contention.snapshot()
        times = thunk_times(trace_dir)
    wall_ms = 1e3 * (after.wall_s - before.wall_s) / args.steps
    devices = built.mesh.devices.size
    rows = group(times, hlo_index.classify(text, args.batch // devices), args.steps)
    thunk_ms = sum(r[1] for r in rows)
    cost = jax_steps.cost_of(compiled)
    share = cpu_contention.foreign_share(before, after)
    print(
        f"{args.method} step, {args.size}px, batch {args.batch}, {devices} device(s), xla={args.xla} "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}), jax {jax.__version__}"
    )
    print(
        f"compile {compile_s:.1f} s; traced wall {wall_ms:.0f} ms/step (trace overhead included); thunk sum "
        f"{thunk_ms:.0f} ms/step; foreign CPU {share if share is None else round(share, 2)}; "
        f"XLA cost analysis: {cost['flops_per_step'] / 1e9:.1f} GFLOP/step, "
        f"{cost['bytes_accessed_per_step'] / 1e9:.2f} GB accessed/step"
    )
    print(f"conv libraries: {xla_flags.count_conv_backends(text)}\n")
    print("| category | ms/step | share | ops |\n|---|---|---|---|")
    for name, ms, fraction, n in rows:
        print(f"| {name} | {ms:.0f} | {100 * fraction:.1f}% | {n} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "compile_s": compile_s,
                    "wall_ms": wall_ms,
                    "thunk_ms": thunk_ms,
                    "foreign_share": share,
                    **cost,
                    "rows": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
