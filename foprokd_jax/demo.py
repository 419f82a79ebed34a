"""The demo run (configs/demo.py): synthetic ISIC-layout data, a demo teacher, BSM vs EKD, a comparison.

Everything it writes is made by the same code paths a real run uses: JPEGs and split CSVs in the official
layout, the tfds array_record copy, a teacher artifact with its sha256 sidecar, Orbax checkpoints.
"""

import json
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from foprokd_jax import methods, plots, train
from foprokd_jax.data import synthetic
from foprokd_jax.models.resnet import ResNet
from foprokd_jax.porting import artifact

# A small bottleneck ResNet: the same block type and feature path as the MoCo-v2 ResNet-50 teacher.
DEMO_TEACHER = dict(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=16)


def ensure_synthetic_data(config) -> None:
    inp = config.input
    marker = os.path.join(inp.split_dir, f"train_skin{inp.fold}_{inp.imb}.csv")
    if os.path.exists(marker):
        return
    logging.info("Writing the synthetic ISIC-layout dataset to %s (once)", inp.image_root)
    if os.path.abspath(inp.split_dir) != os.path.abspath(os.path.join(inp.image_root, "splits")):
        raise ValueError("the demo writes its split CSVs to <image_root>/splits; set input.split_dir to that")
    summary = synthetic.write_synthetic_isic(inp.image_root, **dict(config.demo_data), seed=config.seed)
    logging.info("Synthetic dataset: %s", summary.get("train_counts"))


def ensure_demo_teacher(config) -> None:
    """A randomly initialised teacher in the real artifact format (no pretrained weights offline)."""
    path = config.teacher.artifact
    if os.path.exists(path) and os.path.exists(artifact.sidecar_path(path)):
        return
    module = ResNet(**DEMO_TEACHER)
    size = config.input.image_size
    variables = jax.jit(lambda rng: module.init(rng, jnp.zeros((1, size, size, 3)), train=False))(
        jax.random.PRNGKey(1234)
    )
    artifact.save_artifact(
        path,
        jax.device_get(variables),
        {
            "arch": config.teacher.arch,
            "feature_dim": module.feature_dim,
            "source": "random init (demo only)",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_TEACHER.items()},
        },
    )
    logging.info("Wrote the demo teacher (random init) to %s", path)


def config_for_method(config, method: str) -> ml_collections.ConfigDict:
    """The demo config cut down to `method`: without the keys only other methods read, so that each demo
    run's config.json holds only keys it reads (the demo config carries FoPro-KD's, a superset of EKD's and
    BSM's)."""
    foreign = methods.keys_of_other_methods(method)
    flat = {
        key: value
        for key, value in flax.traverse_util.flatten_dict(config.to_dict(), sep=".").items()
        if key not in foreign
    }
    run_config = ml_collections.ConfigDict(flax.traverse_util.unflatten_dict(flat, sep="."))
    run_config.method = method
    run_config.lock()
    return run_config


def run_demo(config, workdir: str, overwrite: bool = False) -> dict:
    ensure_synthetic_data(config)
    ensure_demo_teacher(config)
    methods = [m for m in config.demo_methods.split("+") if m]
    summary = {}
    for method in methods:
        run_config = config_for_method(config, method)
        logging.info("=== demo: training %s ===", method)
        results = train.train_and_evaluate(run_config, os.path.join(workdir, method), overwrite=overwrite)
        summary[method] = results["report"]
    if jax.process_index() == 0:
        _write_comparison(summary, workdir)
    return summary


def _write_comparison(summary: dict, workdir: str) -> None:
    keys = ("bacc", "macro_f1", "mcc", "head_recall", "medium_recall", "tail_recall")
    header = f"{'method':8s}" + "".join(f"{k:>15s}" for k in keys)
    lines = [header, "-" * len(header)]
    for method, report in summary.items():
        lines.append(
            f"{method:8s}"
            + "".join(f"{report[k]:15.4f}" if isinstance(report.get(k), float) else f"{'-':>15s}" for k in keys)
        )
    table = "\n".join(lines)
    print("\nDemo results on the synthetic test split (best checkpoint by validation balanced accuracy):")
    print(table)
    print("Note: the demo teacher is randomly initialised (no pretrained weights offline).\n")
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump({m: {k: r.get(k) for k in keys} for m, r in summary.items()}, f, indent=2)
    plots.plot_method_comparison(
        {m: {k: r.get(k) for k in keys} for m, r in summary.items()}, os.path.join(workdir, "comparison.png")
    )
