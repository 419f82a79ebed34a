"""Bad inputs through the real CLI (`python launch/train.py ...`), docs/reliability.md (issue 7 items 4-5).

Each case must end in one `error: ...` line that names the thing at fault, a non-zero exit status, no
traceback, and nothing written or changed in the workdir. The dataset's own bad inputs (missing or corrupt
images, bad CSVs, leakage) are tested in test_data_bad_inputs.py.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import cli_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return cli_runs.write_tiny_isic(str(tmp_path_factory.mktemp("isic_bad_inputs")))


def _env(tmp_path_factory):
    return cli_runs.cli_env(tmp_path_factory, DEVICES)


def _train(env, dataset, workdir, *extra, config="configs/isic.py:method=bsm,runlocal"):
    command = [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        f"--config={config}",
        f"--config.input.image_root={dataset}",
        f"--config.input.split_dir={dataset}/splits",
        f"--config.input.prepared_dir={dataset}/tfds",
        f"--workdir={workdir}",
        *extra,
    ]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _assert_clean_error(run, *needles):
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _snapshot(folder):
    """relative path -> sha256 of every file under `folder` (to prove nothing was written or changed)."""
    digests = {}
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config=configs/isic.py:methd=bsm"], "Unknown config argument 'methd'"),
        (["--config.input.bach_size=8"], 'Did you mean "batch_size"'),
        (["--config=configs/no_such_config.py"], "configs/no_such_config.py"),
        (["--config.input.batch_size=7"], "config.input.batch_size=7 is not divisible by the 2 devices"),
    ],
)
def test_bad_command_lines_are_refused_before_the_workdir_exists(args, needle, dataset, tmp_path, tmp_path_factory):
    workdir = tmp_path / "w"
    config_args = [a for a in args if a.startswith("--config=")]
    run = _train(
        _env(tmp_path_factory),
        dataset,
        workdir,
        *[a for a in args if a not in config_args],
        **({"config": config_args[0][len("--config=") :]} if config_args else {}),
    )
    _assert_clean_error(run, needle)
    assert not workdir.exists()


NAN_STEP = 3  # the diverged run's parameters turn NaN before this step (FOPROKD_FAULT=nan@3)


@pytest.fixture(scope="module")
def diverged_run(dataset, tmp_path_factory):
    """A run whose parameters become NaN before step 3, with a checkpoint after every step (1 and 2 are good)."""
    workdir = str(tmp_path_factory.mktemp("diverged") / "w")
    flags = ("--config.eval_every_steps=1",)
    env = dict(_env(tmp_path_factory), FOPROKD_FAULT=f"nan@{NAN_STEP}")
    return workdir, flags, env, _train(env, dataset, workdir, *flags)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(diverged_run, dataset):
    workdir, flags, env, run = diverged_run
    checkpoints = os.path.join(workdir, "checkpoints")
    line = _assert_clean_error(
        run,
        f"non-finite training metrics at step {NAN_STEP}: ",
        "loss=nan",
        "grad_norm=nan",  # every offending term is named
        f"(last finite step {NAN_STEP - 1})",
        f"last good checkpoint, step {NAN_STEP - 1} ({os.path.join(checkpoints, '2')})",
    )
    assert sorted(d for d in os.listdir(checkpoints) if d.isdigit()) == ["1", "2"]  # nothing after the bad step
    assert not [d for d in os.listdir(checkpoints) if "tmp" in d]
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert max(json.loads(record)["step"] for record in f) == NAN_STEP - 1  # the bad step is never logged
    state = _restore_state(os.path.join(checkpoints, "2", "state"))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state) if leaf.dtype.kind == "f")

    # The same command again resumes from the kept checkpoint, diverges the same way, and leaves it as it was.
    before = _snapshot(checkpoints)
    again = _train(env, dataset, workdir, *flags)
    assert f"Resuming from step {NAN_STEP - 1}" in again.stderr
    assert _assert_clean_error(again) == line
    assert _snapshot(checkpoints) == before


def test_a_diverging_learning_rate_stops_cleanly(dataset, tmp_path, tmp_path_factory):
    """Real divergence (learning rate 1e10): whichever goes non-finite first, the training metrics or the
    evaluated logits, the run stops with the step named and no non-finite checkpoint."""
    workdir = str(tmp_path / "w")
    run = _train(_env(tmp_path_factory), dataset, workdir, "--config.optim.lr=1e10", "--config.eval_every_steps=1")
    line = _assert_clean_error(run, "non-finite", "at step ", "Training stopped")
    step = int(re.search(r"at step (\d+)", line).group(1))
    checkpoints = os.path.join(workdir, "checkpoints")
    committed = [d for d in os.listdir(checkpoints) if d.isdigit()]
    assert all(int(d) < step for d in committed) and not os.path.exists(os.path.join(workdir, "results.json"))
    for d in committed:
        state = _restore_state(os.path.join(checkpoints, d, "state"))
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state) if leaf.dtype.kind == "f")


def _restore_state(path):
    """A saved state as a nested dict of numpy arrays, on one device (it was saved from DEVICES devices)."""
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(path)
    stored = getattr(getattr(stored, "item_metadata", stored), "tree", stored)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored, is_leaf=lambda m: hasattr(m, "shape")
    )
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def test_wrong_architecture_and_truncated_checkpoints_are_refused(diverged_run, dataset, tmp_path, tmp_path_factory):
    source, flags, env, _ = diverged_run
    # A checkpoint written by another architecture (here: a classifier with one more input feature).
    workdir = str(tmp_path / "other_arch")
    shutil.copytree(source, workdir)
    latest = str(max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()))
    state_dir = os.path.join(workdir, "checkpoints", latest, "state")
    state = _restore_state(state_dir)
    kernel = state["params"]["fc"]["kernel"]
    state["params"]["fc"]["kernel"] = np.zeros((kernel.shape[0] + 1, kernel.shape[1]), kernel.dtype)
    shutil.rmtree(state_dir)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(state_dir, state)
    checkpointer.wait_until_finished()
    before = _snapshot(workdir)
    run = _train(env, dataset, workdir, *flags)
    _assert_clean_error(
        run,
        os.path.join(workdir, "checkpoints", latest),
        "does not match the model",
        f"params/fc/kernel: checkpoint {(kernel.shape[0] + 1, kernel.shape[1])} vs model {tuple(kernel.shape)}",
    )
    assert _snapshot(workdir) == before

    # A truncated checkpoint (a data file cut short, as by a full disk).
    workdir = str(tmp_path / "truncated")
    shutil.copytree(source, workdir)
    step_dir = os.path.join(workdir, "checkpoints", latest)  # the one a rerun restores
    data_files = [
        os.path.join(parent, name)
        for parent, _, names in os.walk(step_dir)
        for name in names
        if os.sep + "d" + os.sep in os.path.join(parent, name) + os.sep
    ]
    largest = max(data_files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    before = _snapshot(workdir)
    run = _train(env, dataset, workdir, *flags)
    _assert_clean_error(run, os.path.join(workdir, "checkpoints", latest), "cannot be read", "truncated or corrupt")
    assert _snapshot(workdir) == before


def test_workdir_of_another_config_is_refused_unless_overwrite(diverged_run, dataset, tmp_path, tmp_path_factory):
    source, _, _, _ = diverged_run
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)
    before = _snapshot(workdir)
    env = _env(tmp_path_factory)
    run = _train(env, dataset, workdir, "--config.total_steps=1")  # another config
    _assert_clean_error(run, workdir, "different config", "eval_every_steps", "total_steps", "--overwrite")
    assert _snapshot(workdir) == before

    # Run files without a config.json cannot be attributed to any config: refused as well.
    no_config = str(tmp_path / "no_config")
    shutil.copytree(source, no_config)
    os.remove(os.path.join(no_config, "config.json"))
    _assert_clean_error(_train(env, dataset, no_config, "--config.total_steps=1"), "no config.json")

    # --overwrite moves the old run aside (renamed, nothing deleted) and trains afresh.
    run = _train(env, dataset, workdir, "--config.total_steps=1", "--overwrite")
    assert run.returncode == 0, run.stderr[-3000:]
    moved = [name for name in os.listdir(tmp_path) if name.startswith("w.replaced-")]
    assert len(moved) == 1 and _snapshot(tmp_path / moved[0]) == before
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["total_steps"] == 1
    assert os.path.exists(os.path.join(workdir, "results.json"))
    # With the same config, --overwrite keeps and resumes the run: safe in a requeued job script.
    run = _train(env, dataset, workdir, "--config.total_steps=1", "--overwrite")
    assert run.returncode == 0 and "Resuming from step 1" in run.stderr
    assert len([name for name in os.listdir(tmp_path) if name.startswith("w.replaced-")]) == 1


class _RunsCodeWhenUnpickled:
    """Unpickling this calls os.mkdir(marker): what a malicious .pth could do with any function."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_convert_teacher_refuses_a_pickle_that_would_run_code(tmp_path):
    import torch

    src, out, marker = tmp_path / "evil.pth", tmp_path / "teacher.npz", tmp_path / "code_ran"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": _RunsCodeWhenUnpickled(str(marker))}, src)
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "convert_teacher.py"),
            f"--src={src}",
            f"--out={out}",
            "--arch=resnet18",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"refusing to load {src}" in run.stderr and "arbitrary Python code" in run.stderr
    assert not marker.exists() and not out.exists() and not os.path.exists(f"{out}.json")
