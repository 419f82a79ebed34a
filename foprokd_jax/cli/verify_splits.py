"""Checks a downloaded folder of ISIC-2019-LT split CSVs against the official files' facts.

    foprokd-verify-splits --split_dir=data/isic2019/splits
    python launch/verify_splits.py --split_dir=data/isic2019/splits

The 45 files `{train,val,test}_skin{1..5}_{0.01,0.005,0.002}.csv` come from the authors' repository
(https://github.com/xmed-lab/FoPro-KD, folder `data/ham2019/`); the package ships only their facts (per-class
counts and sha256 digests of the image ids, `foprokd_jax/data/isic2019_lt_split_facts.json`). Every file that
differs is named on stdout with what differs (missing, unreadable, other counts, other ids, other labels);
then one `error:` line on stderr and exit status 1. A folder that matches prints one `OK` line, exit 0.

`--write_facts=PATH` (maintainers) computes the facts of `--split_dir` and writes them to PATH instead;
this is how the packaged table was made from the official files.
`--facts=PATH` checks against another facts table (e.g. one written with --write_facts).
"""

import os
import sys

from absl import app, flags

from foprokd_jax.data import isic_splits, split_facts

flags.DEFINE_string("split_dir", None, "Folder holding the downloaded {split}_skin{fold}_{imb}.csv files.")
flags.DEFINE_string("facts", None, "Facts JSON to check against (default: the packaged official facts).")
flags.DEFINE_string("write_facts", None, "Compute the facts of --split_dir and write them to this path.")
FLAGS = flags.FLAGS


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    split_dir = FLAGS.split_dir
    if not os.path.isdir(split_dir):
        _fail(f"--split_dir={split_dir!r} is not a folder. {isic_splits.SPLITS_SOURCE_HINT}")
    if FLAGS.write_facts:
        try:
            files = split_facts.folder_facts(split_dir)
            split_facts.write_facts(FLAGS.write_facts, files)
        except (isic_splits.SplitFileError, OSError) as e:
            _fail(str(e))
        print(f"wrote the facts of {len(files)} split files of {split_dir} to {FLAGS.write_facts}")
        return
    try:
        expected = split_facts.load_facts(FLAGS.facts)
    except (OSError, ValueError) as e:
        _fail(f"--facts={FLAGS.facts!r} cannot be used: {e}")
    differences = split_facts.compare_folder(split_dir, expected)
    total = len(split_facts.split_file_names())
    if not differences:
        print(f"OK: all {total} split files in {split_dir} match the official ones")
        return
    for difference in differences:
        print(difference)
    names = ", ".join(d.name for d in differences)
    _fail(
        f"{len(differences)} of {total} split files in {split_dir} differ from the official ones: {names}. "
        f"{isic_splits.SPLITS_SOURCE_HINT}"
    )


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/verify_splits.py`."""
    flags.mark_flags_as_required(["split_dir"])
    app.run(main)


if __name__ == "__main__":
    run()
