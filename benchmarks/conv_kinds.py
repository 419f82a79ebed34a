"""ResNet-18 student convolutions timed one by one: forward, input gradient (dX), weight gradient (dW).

    .venv/bin/python -m benchmarks.conv_kinds --size=112 --batch=32              # JAX both flag sets + torch
    .venv/bin/python -m benchmarks.conv_kinds --size=224 --batch=32 --reps=3

The student's train step is dominated by its convolutions (docs/performance.md). This times every distinct
convolution of torchvision's ResNet-18 at the given input size, in each direction, and sums them with
their multiplicity, for JAX under `--xla=none` (XLA's defaults: YNNPACK convolutions) and
`--xla=cpu_defaults` (foprokd_jax.xla_flags), each in its own process, and for torch (channels_last,
`torch.ops.aten.convolution_backward` with one output mask at a time). The stem's dX is skipped: the
student never needs the image gradient. Wall and CPU time are medians of `--reps` calls after a warm-up;
the foreign CPU share of each process's timed region is printed with it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KINDS = ("fwd", "dX", "dW")


def resnet18_convs(size: int) -> list:
    """(name, c_in, c_out, kernel, stride, input H=W, count) of every distinct conv of ResNet-18."""
    s = size // 4  # after the stem conv (stride 2) and the max-pool (stride 2)
    convs = [("stem 7x7/2", 3, 64, 7, 2, size, 1), ("layer1 3x3", 64, 64, 3, 1, s, 4)]
    for i, (c_in, c_out) in enumerate(((64, 128), (128, 256), (256, 512)), start=2):
        convs += [
            (f"layer{i} 3x3/2", c_in, c_out, 3, 2, s, 1),
            (f"layer{i} 3x3", c_out, c_out, 3, 1, s // 2, 3),
            (f"layer{i} downsample 1x1/2", c_in, c_out, 1, 2, s, 1),
        ]
        s //= 2
    return convs


def _median_timing(fn, reps):
    from benchmarks import cpu_contention

    fn()  # compile / first touch
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        a = cpu_contention.snapshot()
        fn()
        b = cpu_contention.snapshot()
        wall.append(b.wall_s - a.wall_s)
        cpu.append(b.own_cpu_s - a.own_cpu_s)
    return statistics.median(wall), statistics.median(cpu)


def time_jax(size, batch, reps) -> list:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rows, rng = [], np.random.default_rng(0)
    for name, c_in, c_out, k, stride, h, count in resnet18_convs(size):
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        x = jnp.asarray(rng.standard_normal((batch, h, h, c_in)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)) * 0.05, jnp.float32)

        def conv(x, w, stride=stride, pad=pad):
            return jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))

        dy = jnp.ones_like(conv(x, w))
        fns = {
            "fwd": jax.jit(conv),
            "dX": jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
            "dW": jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
        }
        for kind, fn in fns.items():
            if kind == "dX" and name.startswith("stem"):
                continue
            args = (x, w) if kind == "fwd" else (x, w, dy)
            wall, cpu = _median_timing(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)), reps)
            rows.append(dict(conv=name, kind=kind, count=count, wall_ms=1e3 * wall, cpu_ms=1e3 * cpu))
    return rows


def time_torch(size, batch, reps, threads) -> list:
    import torch

    torch.set_num_threads(threads)
    rows, cl = [], torch.channels_last
    for name, c_in, c_out, k, stride, h, count in resnet18_convs(size):
        x = torch.randn(batch, c_in, h, h).contiguous(memory_format=cl)
        w = (torch.randn(c_out, c_in, k, k) * 0.05).contiguous(memory_format=cl)
        y = torch.nn.functional.conv2d(x, w, None, stride, k // 2)
        dy = torch.ones_like(y).contiguous(memory_format=cl)

        def backward(mask, x=x, w=w, dy=dy, stride=stride, k=k):
            return torch.ops.aten.convolution_backward(
                dy, x, w, None, [stride] * 2, [k // 2] * 2, [1, 1], False, [0, 0], 1, mask
            )

        fns = {
            "fwd": lambda x=x, w=w, stride=stride, k=k: torch.nn.functional.conv2d(x, w, None, stride, k // 2),
            "dX": lambda: backward([True, False, False]),
            "dW": lambda: backward([False, True, False]),
        }
        with torch.no_grad():
            for kind, fn in fns.items():
                if kind == "dX" and name.startswith("stem"):
                    continue
                wall, cpu = _median_timing(fn, reps)
                rows.append(dict(conv=name, kind=kind, count=count, wall_ms=1e3 * wall, cpu_ms=1e3 * cpu))
    return rows


def totals(rows) -> dict:
    """kind -> (wall ms, CPU ms) summed over the network (each conv times its multiplicity)."""
    return {
        kind: (
            sum(r["wall_ms"] * r["count"] for r in rows if r["kind"] == kind),
            sum(r["cpu_ms"] * r["count"] for r in rows if r["kind"] == kind),
        )
        for kind in KINDS
    }


def _one(args):
    """Runs one framework configuration in this process and prints its rows as JSON."""
    from benchmarks import cpu_contention

    if args.run == "jax_cpu_defaults":
        from foprokd_jax import xla_flags

        xla_flags.apply_cpu_defaults()
    start = cpu_contention.snapshot()
    if args.run.startswith("jax"):
        rows = time_jax(args.size, args.batch, args.reps)
    else:
        rows = time_torch(args.size, args.batch, args.reps, args.threads or len(os.sched_getaffinity(0)))
    share = cpu_contention.foreign_share(start, cpu_contention.snapshot())
    print(json.dumps({"rows": rows, "foreign_share": share}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = the cores available")
    parser.add_argument("--configs", default="jax_none,jax_cpu_defaults,torch")
    parser.add_argument("--out", default="")
    parser.add_argument("--run", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return _one(args)
    results = {}
    for config in args.configs.split(","):
        env = dict(os.environ, FOPROKD_XLA_CPU_DEFAULTS="1" if config == "jax_cpu_defaults" else "0")
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.conv_kinds",
            f"--run={config}",
            f"--size={args.size}",
            f"--batch={args.batch}",
            f"--reps={args.reps}",
            f"--threads={args.threads}",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{config} failed: {proc.stderr[-2000:]}")
        results[config] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{config}: done (foreign CPU {results[config]['foreign_share']:.2f})", flush=True)
    configs = list(results)
    print(f"\nResNet-18 convolutions, {args.size}px, batch {args.batch}: ms per step summed over layers (wall / CPU)\n")
    print("| kind | " + " | ".join(configs) + " |\n|---|" + "---|" * len(configs))
    sums = {c: totals(results[c]["rows"]) for c in configs}
    for kind in KINDS + ("all",):
        cells = []
        for c in configs:
            wall = sum(v[0] for v in sums[c].values()) if kind == "all" else sums[c][kind][0]
            cpu = sum(v[1] for v in sums[c].values()) if kind == "all" else sums[c][kind][1]
            cells.append(f"{wall:.0f} / {cpu:.0f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("| foreign CPU | " + " | ".join(f"{100 * results[c]['foreign_share']:.0f}%" for c in configs) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
