"""A grid of training runs (methods x teachers x imbalance factors x folds x seeds) under one sweep root.

    # 3 methods x 3 imbalance factors x 5 folds on this machine, one run after the other:
    python launch/sweep.py --config=configs/isic.py --methods=bsm,ekd,fopro --imbs=0.01,0.005,0.002 \
        --folds=1,2,3,4,5 --sweep_root=workdirs/sweep_isic
    # the same runs as one command per line, for a cluster/pod scheduler:
    python launch/sweep.py ... --mode=print > commands.txt
    python launch/report.py --sweep_dir=workdirs/sweep_isic             # the tables, once runs finish

Every grid point becomes `python launch/train.py --config=<file>:<base args>,method=..,teacher=..,imb=..,
fold=.. [--config.seed=..] [--config.<key>=<value> for each --override] --workdir=<sweep_root>/<name>`
with a deterministic name such as `ekd_moco_r50_imb0.002_fold3`. Only the axes given are set (a config
without imbalance factors simply gets no --imbs). Methods in --teacherless_methods ('bsm') ignore the
teacher axis, so they run once per point, not once per teacher.

--mode=local runs them in order: a run whose results.json exists is skipped, an interrupted one is
simply started again (train.py resumes from its latest checkpoint), a failed one is reported and the
sweep goes on; failures are listed at the end and the exit status is 1. Each run's output goes to
<workdir>/train.log. <sweep_root>/sweep.json lists the runs (name, workdir, config, command) with their
status. Children share a persistent XLA compilation cache (--compilation_cache, default
<sweep_root>/jax_cache), so runs of the same shapes compile once. Docs: docs/evaluation.md.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time

from foprokd_jax import methods as method_registry
from foprokd_jax.cli import config_path

# Each run is `python -m foprokd_jax.cli.train` (= foprokd-train = python launch/train.py), from the caller's cwd.
TRAIN_MODULE = "foprokd_jax.cli.train"
GRID_ORDER = ("method", "teacher", "imb", "fold", "seed")  # name order and loop order (seed innermost)


def _name_part(axis: str, value) -> str:
    text = str(value) if axis in ("method", "teacher") else f"{axis}{value}"
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", text)


def expand_grid(
    config: str,
    sweep_root: str,
    methods=(),
    teachers=(),
    imbs=(),
    folds=(),
    seeds=(),
    overrides=(),
    teacherless_methods=("bsm",),
    python: str = sys.executable,
) -> list:
    """The runs of the grid, in a fixed order (methods, teachers, imbs, folds, seeds nested in that order).

    `config` is the base config spec `path[:args]`; grid values are appended to its `:args`. `overrides`
    are 'key=value' strings passed as `--config.key=value`. Each run is a dict: name, workdir, grid (the
    axis values), config, command (argv list).
    """
    if not methods:
        raise ValueError("the grid needs at least one method (--methods)")
    path, _, base_args = config_path.resolve(config).partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    for override in overrides:
        if "=" not in override or override.startswith("="):
            raise ValueError(f"override {override!r} is not key=value")
    seen, runs = set(), []
    for method in methods:
        method_teachers = [None] if (not teachers or method in teacherless_methods) else list(teachers)
        for teacher in method_teachers:
            for imb in list(imbs) or [None]:
                for fold in list(folds) or [None]:
                    for seed in list(seeds) or [None]:
                        grid = {"method": method, "teacher": teacher, "imb": imb, "fold": fold, "seed": seed}
                        grid = {axis: value for axis, value in grid.items() if value is not None}
                        name = "_".join(_name_part(axis, grid[axis]) for axis in GRID_ORDER if axis in grid)
                        if name in seen:
                            raise ValueError(f"two grid points give the run name {name!r}; remove duplicates")
                        seen.add(name)
                        args = [a for a in base_args.split(",") if a.strip()]
                        args += [
                            f"{axis}={grid[axis]}" for axis in ("method", "teacher", "imb", "fold") if axis in grid
                        ]
                        run_config = f"{path}:{','.join(args)}"
                        workdir = os.path.join(sweep_root, name)
                        command = [python, "-m", TRAIN_MODULE, f"--config={run_config}", f"--workdir={workdir}"]
                        if "seed" in grid:
                            command.append(f"--config.seed={grid['seed']}")
                        # A key only other methods read (teacher.* for 'bsm', fpg.* for 'ekd') is not
                        # passed to this run; a key no method reads still fails the run, as a typo must.
                        foreign = (
                            method_registry.keys_of_other_methods(method)
                            if method in method_registry.METHODS
                            else set()
                        )
                        command += [
                            f"--config.{override}"
                            for override in overrides
                            if override.partition("=")[0] not in foreign
                        ]
                        runs.append(
                            {"name": name, "workdir": workdir, "grid": grid, "config": run_config, "command": command}
                        )
    return runs


def _write_json(path: str, data: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def run_local(runs: list, sweep_json: str, sweep_info: dict, compilation_cache: str = "", echo=print) -> list:
    """Runs each pending run in turn (see the module docstring); returns the failed runs."""
    env = dict(os.environ)
    if compilation_cache and "JAX_COMPILATION_CACHE_DIR" not in env:
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(compilation_cache)
    for run in runs:
        run["status"] = "done" if os.path.exists(os.path.join(run["workdir"], "results.json")) else "pending"
    _write_json(sweep_json, dict(sweep_info, runs=runs))
    todo = [run for run in runs if run["status"] == "pending"]
    echo(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run")
    durations, failed = [], []
    for index, run in enumerate(todo, start=1):
        os.makedirs(run["workdir"], exist_ok=True)
        resuming = os.path.isdir(os.path.join(run["workdir"], "checkpoints"))
        echo(f"[{index}/{len(todo)}] {run['name']}: {'resuming' if resuming else 'starting'}")
        log_path = os.path.join(run["workdir"], "train.log")
        start = time.monotonic()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(run['command'])}\n")
            log.flush()
            try:
                returncode = subprocess.run(run["command"], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            except KeyboardInterrupt:
                run["status"] = "interrupted"
                _write_json(sweep_json, dict(sweep_info, runs=runs))
                raise
        seconds = time.monotonic() - start
        durations.append(seconds)
        finished = returncode == 0 and os.path.exists(os.path.join(run["workdir"], "results.json"))
        run.update(status="done" if finished else "failed", seconds=round(seconds, 1), returncode=returncode)
        if not finished:
            failed.append(run)
        _write_json(sweep_json, dict(sweep_info, runs=runs))
        eta = sum(durations) / len(durations) * (len(todo) - index)
        echo(
            f"[{index}/{len(todo)}] {run['name']}: {run['status']} in {_duration(seconds)} (exit {returncode}) | "
            f"{index - len(failed)} ok, {len(failed)} failed | ETA {_duration(eta)}"
        )
        if not finished:
            echo(f"    log {log_path}:\n" + "\n".join("    " + line for line in _log_tail(log_path).splitlines()))
    return failed


def sweep(
    config,
    sweep_root,
    methods=(),
    teachers=(),
    imbs=(),
    folds=(),
    seeds=(),
    overrides=(),
    teacherless_methods=("bsm",),
    mode="local",
    compilation_cache=None,
    python=None,
    echo=print,
) -> int:
    """Expands the grid, writes sweep.json, then prints or runs the commands; returns the exit status."""
    if mode not in ("local", "print"):
        raise ValueError(f"mode must be 'local' or 'print', got {mode!r}")
    if python is None:
        python = sys.executable if mode == "local" else "python"
    runs = expand_grid(
        config, sweep_root, methods, teachers, imbs, folds, seeds, overrides, teacherless_methods, python
    )
    os.makedirs(sweep_root, exist_ok=True)
    sweep_json = os.path.join(sweep_root, "sweep.json")
    info = {
        "config": config,
        "overrides": list(overrides),
        "grid": {
            "methods": list(methods),
            "teachers": list(teachers),
            "imbs": list(imbs),
            "folds": list(folds),
            "seeds": list(seeds),
        },
        "teacherless_methods": list(teacherless_methods),
    }
    if mode == "print":
        _write_json(sweep_json, dict(info, runs=runs))
        for run in runs:
            echo(shlex.join(run["command"]))
        return 0
    cache = os.path.join(sweep_root, "jax_cache") if compilation_cache is None else compilation_cache
    failed = run_local(runs, sweep_json, info, cache, echo)
    if failed:
        echo(f"{len(failed)} of {len(runs)} runs failed (rerun the same command to retry them):")
        for run in failed:
            echo(f"  {run['name']}: exit {run['returncode']}, log {os.path.join(run['workdir'], 'train.log')}")
        return 1
    echo(f"all {len(runs)} runs done; tables: python launch/report.py --sweep_dir={sweep_root}")
    return 0


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        status = sweep(
            f.config,
            f.sweep_root,
            f.methods,
            f.teachers,
            f.imbs,
            [int(x) for x in f.folds],
            [int(x) for x in f.seeds],
            f.override,
            f.teacherless_methods,
            f.mode,
            f.compilation_cache,
            f.python,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    sys.exit(status)


def _define_flags():
    # Defined only when run as a script, so tests can import this module next to other launchers.
    from absl import flags

    flags.DEFINE_string(
        "config",
        None,
        "Base config spec path[:args], e.g. configs/isic.py or "
        "configs/isic.py:runlocal; the grid's method/teacher/imb/fold are appended to args.",
    )
    flags.DEFINE_string("sweep_root", None, "Folder holding one workdir per run and sweep.json.")
    flags.DEFINE_list("methods", [], "Methods (config arg method=...).")
    flags.DEFINE_list("teachers", [], "Teacher registry names (config arg teacher=...); none: the config's.")
    flags.DEFINE_list("imbs", [], "Imbalance factors (config arg imb=...), e.g. 0.01,0.005,0.002.")
    flags.DEFINE_list("folds", [], "Folds (config arg fold=...), e.g. 1,2,3,4,5.")
    flags.DEFINE_list("seeds", [], "Seeds (--config.seed=...); none: the config's.")
    flags.DEFINE_multi_string(
        "override",
        [],
        "key=value, passed to every run as --config.key=value (repeatable), e.g. --override=total_steps=1000.",
    )
    flags.DEFINE_list("teacherless_methods", ["bsm"], "Methods without a teacher: the teacher axis is ignored.")
    flags.DEFINE_enum("mode", "local", ["local", "print"], "local: run here one by one; print: print commands.")
    flags.DEFINE_string(
        "compilation_cache",
        None,
        "Persistent XLA cache shared by the runs (default "
        "<sweep_root>/jax_cache; '' = off; JAX_COMPILATION_CACHE_DIR in the environment wins).",
    )
    flags.DEFINE_string("python", None, "Interpreter in the commands (default: this one; 'python' in print mode).")
    flags.mark_flags_as_required(["config", "sweep_root"])


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/sweep.py`."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
