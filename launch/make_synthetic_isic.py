"""Writes a small synthetic ISIC-2019-LT dataset in the official layout (images + split CSVs).

    python launch/make_synthetic_isic.py --out /tmp/isic_synth --n_max 64

Then use `<out>` as the manual_dir for `prepare_isic` and `<out>/splits` as the split folder.
HAM10000, APTOS 2019 and Hyper-Kvasir: launch/make_synthetic_dataset.py --dataset=... --out=...
"""
import argparse
import json
import os
import sys

# Runnable from a fresh clone without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from foprokd_jax.data.synthetic import write_synthetic_isic  # noqa: E402


def _size(text: str) -> tuple:
    width, height = text.lower().split('x')
    return int(width), int(height)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--n_max', type=int, default=64, help='train images of the head class')
    parser.add_argument('--val_per_class', type=int, default=4)
    parser.add_argument('--test_per_class', type=int, default=8)
    parser.add_argument('--image_sizes', nargs='+', type=_size, default=[(600, 450), (1024, 1024)],
                        help='WIDTHxHEIGHT sizes used in turn, e.g. 600x450 1024x1024')
    parser.add_argument('--folds', nargs='+', type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument('--imbs', nargs='+', default=['0.01', '0.005', '0.002'])
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    summary = write_synthetic_isic(
        args.out, n_max=args.n_max, val_per_class=args.val_per_class,
        test_per_class=args.test_per_class, image_sizes=args.image_sizes, folds=args.folds,
        imbs=args.imbs, seed=args.seed)
    print(json.dumps(summary, indent=1, default=str))


if __name__ == '__main__':
    main()
