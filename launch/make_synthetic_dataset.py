"""Writes a small synthetic benchmark in its real on-disk layout (images + label files), for demos and tests.

    python launch/make_synthetic_dataset.py --dataset=hyperkvasir --out=/tmp/hk_synth
    python launch/train.py --config=configs/hyperkvasir.py:runlocal --config.input.image_root=/tmp/hk_synth \
        --config.input.prepared_dir=/tmp/hk_synth/tfds

--dataset: ham10000 | aptos | hyperkvasir | isic2019_lt. The output folder is what input.image_root expects
(for isic2019_lt also set input.split_dir=<out>/splits). Class sizes are the real ones times --scale (at
least --min_per_class); ISIC uses its own recipe (foprokd_jax/data/synthetic.py).
"""
import argparse
import json
import os
import sys

# Runnable from a fresh clone without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from foprokd_jax.data import synthetic_benchmarks  # noqa: E402

DATASETS = ("ham10000", "aptos", "hyperkvasir", "isic2019_lt")


def _size(text: str) -> tuple:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--out", required=True, help="output folder (becomes input.image_root)")
    parser.add_argument("--scale", type=float, default=None,
                        help="fraction of the real class sizes (default: the writer's, ~100-150 images)")
    parser.add_argument("--min_per_class", type=int, default=None, help="smallest class size (>= 5 for 5 folds)")
    parser.add_argument("--image_size", type=_size, default=None, help="WIDTHxHEIGHT of the written images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kwargs = {"seed": args.seed}
    if args.dataset == "isic2019_lt":
        if args.image_size:
            kwargs["image_sizes"] = (args.image_size,)
        if args.scale is not None or args.min_per_class is not None:
            parser.error("--scale/--min_per_class do not apply to isic2019_lt (see make_synthetic_isic.py)")
    else:
        kwargs.update({k: v for k, v in [("scale", args.scale), ("min_per_class", args.min_per_class),
                                         ("image_size", args.image_size)] if v is not None})
    summary = synthetic_benchmarks.write_synthetic(args.dataset, args.out, **kwargs)
    summary["config"] = {"input.dataset": args.dataset, "input.image_root": args.out}
    if args.dataset == "isic2019_lt":
        summary["config"]["input.split_dir"] = os.path.join(args.out, "splits")
    print(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
