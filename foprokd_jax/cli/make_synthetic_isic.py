"""Writes a small synthetic ISIC-2019-LT dataset in the official layout (images + split CSVs).

    python launch/make_synthetic_isic.py --out=/tmp/isic_synth --n_max=64

Then use `<out>` as the manual_dir for `prepare_isic` and `<out>/splits` as the split folder.
HAM10000, APTOS 2019 and Hyper-Kvasir: launch/make_synthetic_dataset.py --dataset=... --out=...
"""

import json
import sys

from absl import app, flags

from foprokd_jax.cli.flag_values import parse_size
from foprokd_jax.data.synthetic import write_synthetic_isic

flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_integer("n_max", 64, "Training images of the head class.")
flags.DEFINE_integer("val_per_class", 4, "Validation images per class.")
flags.DEFINE_integer("test_per_class", 8, "Test images per class.")
flags.DEFINE_list("image_sizes", ["600x450", "1024x1024"], "WIDTHxHEIGHT sizes used in turn.")
flags.DEFINE_list("folds", ["1", "2", "3", "4", "5"], "Folds whose split CSVs are written.")
flags.DEFINE_list("imbs", ["0.01", "0.005", "0.002"], "Imbalance factors whose split CSVs are written.")
flags.DEFINE_integer("seed", 0, "Seed of the images and splits.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        summary = write_synthetic_isic(
            FLAGS.out,
            n_max=FLAGS.n_max,
            val_per_class=FLAGS.val_per_class,
            test_per_class=FLAGS.test_per_class,
            image_sizes=[parse_size(s, "image_sizes") for s in FLAGS.image_sizes],
            folds=[int(f) for f in FLAGS.folds],
            imbs=FLAGS.imbs,
            seed=FLAGS.seed,
        )
    except (ValueError, OSError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    print(json.dumps(summary, indent=1, default=str))


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/make_synthetic_isic.py`."""
    flags.mark_flags_as_required(["out"])
    app.run(main)


if __name__ == "__main__":
    run()
