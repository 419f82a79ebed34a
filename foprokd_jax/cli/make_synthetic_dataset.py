"""Writes a small synthetic benchmark in its real on-disk layout (images + label files), for demos and tests.

    python launch/make_synthetic_dataset.py --dataset=hyperkvasir --out=/tmp/hk_synth
    python launch/train.py --config=configs/hyperkvasir.py:runlocal --config.input.image_root=/tmp/hk_synth \
        --config.input.prepared_dir=/tmp/hk_synth/tfds

--dataset: ham10000 | aptos | hyperkvasir | isic2019_lt. The output folder is what input.image_root expects
(for isic2019_lt also set input.split_dir=<out>/splits). Class sizes are the real ones times --scale (at
least --min_per_class); ISIC uses its own recipe (foprokd_jax/data/synthetic.py).
"""

import json
import os
import sys

from absl import app, flags

from foprokd_jax.cli.flag_values import parse_size
from foprokd_jax.data import synthetic_benchmarks

DATASETS = ("ham10000", "aptos", "hyperkvasir", "isic2019_lt")

flags.DEFINE_enum("dataset", None, DATASETS, "Benchmark whose on-disk layout is written.")
flags.DEFINE_string("out", None, "Output folder (becomes input.image_root).")
flags.DEFINE_float("scale", None, "Fraction of the real class sizes (default: the writer's, ~100-150 images).")
flags.DEFINE_integer("min_per_class", None, "Smallest class size (>= 5 for 5 folds).")
flags.DEFINE_string("image_size", None, "WIDTHxHEIGHT of the written images, e.g. 600x450.")
flags.DEFINE_integer("seed", 0, "Seed of the images and labels.")
FLAGS = flags.FLAGS


def write(dataset: str, out: str, scale=None, min_per_class=None, image_size=None, seed: int = 0) -> dict:
    """Writes the dataset; returns its summary with the config keys that point a run at it."""
    kwargs = {"seed": seed}
    if dataset == "isic2019_lt":
        if image_size:
            kwargs["image_sizes"] = (image_size,)
        if scale is not None or min_per_class is not None:
            raise ValueError("--scale/--min_per_class do not apply to isic2019_lt (see make_synthetic_isic.py)")
    else:
        kwargs.update(
            {
                k: v
                for k, v in [("scale", scale), ("min_per_class", min_per_class), ("image_size", image_size)]
                if v is not None
            }
        )
    summary = synthetic_benchmarks.write_synthetic(dataset, out, **kwargs)
    summary["config"] = {"input.dataset": dataset, "input.image_root": out}
    if dataset == "isic2019_lt":
        summary["config"]["input.split_dir"] = os.path.join(out, "splits")
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        size = parse_size(FLAGS.image_size) if FLAGS.image_size else None
        summary = write(FLAGS.dataset, FLAGS.out, FLAGS.scale, FLAGS.min_per_class, size, FLAGS.seed)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    print(json.dumps(summary, indent=1, default=str))


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/make_synthetic_dataset.py`."""
    flags.mark_flags_as_required(["dataset", "out"])
    app.run(main)


if __name__ == "__main__":
    run()
