"""The packaged facts of the official ISIC-2019-LT split CSVs, the reader on CSVs written in the official format
from those facts, and the verifier (`foprokd_jax.data.split_facts`, `launch/verify_splits.py`).

The official CSVs are not in the repository: everything here runs on folders written by `_write_official_format`
from the packaged per-class counts. The last test reads the real files where $FOPROKD_ISIC_SPLITS names them.
"""

import csv
import hashlib
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from foprokd_jax.data import isic_splits, split_facts
from foprokd_jax.data.synthetic import FINDING_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ISIC-2019 training images per class in frequency order (NV ... DF), from its ground-truth CSV.
ISIC_TOTALS = (12875, 4522, 3323, 2624, 867, 628, 253, 239)


def _recipe_train_counts(imb: float) -> list:
    """docs/reference_semantics.md §8.1: hold out 50 + 100 per class, n_i = min(floor(12875 imb^(i/7)), N_i - 150)."""
    return [min(math.floor(ISIC_TOTALS[0] * imb ** (i / 7)), total - 150) for i, total in enumerate(ISIC_TOTALS)]


def _write_official_format(split_dir, facts, seed=0):
    """Writes the 45 CSVs (header image,finding_name,finding) with the per-class counts of `facts`.

    Synthetic ids; per fold and imbalance factor an independent draw from per-class pools, so train/val/test
    never share an image within a fold; every 7th id carries the `_downsampled` suffix, as some real ones do.
    """
    os.makedirs(split_dir, exist_ok=True)
    pools = [
        [f"ISIC_{c}{k:06d}" + ("_downsampled" if k % 7 == 3 else "") for k in range(total)]
        for c, total in enumerate(ISIC_TOTALS)
    ]
    for f_index, fold in enumerate(isic_splits.FOLDS):
        for i_index, imb in enumerate(isic_splits.IMBALANCE_FACTORS):
            rng = np.random.default_rng([seed, f_index, i_index])
            drawn = [list(rng.permutation(pool)) for pool in pools]
            for split in isic_splits.SPLITS:
                name = os.path.basename(isic_splits.split_csv_path("", split, fold, imb))
                rows = []
                for c, count in enumerate(facts[name]["class_counts"]):
                    rows += [(drawn[c].pop(), c) for _ in range(count)]
                with open(os.path.join(split_dir, name), "w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["image", "finding_name", "finding"])
                    shuffled = (rows[j] for j in rng.permutation(len(rows)))
                    writer.writerows((image, FINDING_NAME[c], c) for image, c in shuffled)
    return split_dir


@pytest.fixture(scope="module")
def written_folder(tmp_path_factory):
    """A folder in the official format with the official per-class counts (not the official ids)."""
    return _write_official_format(str(tmp_path_factory.mktemp("splits") / "official_format"), split_facts.load_facts())


@pytest.fixture(scope="module")
def written_facts(written_folder):
    """The facts table of `written_folder` (what --write_facts computes for it)."""
    return split_facts.folder_facts(written_folder)


def _verify(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "verify_splits.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _error_lines(run):
    return [line for line in run.stderr.splitlines() if line.startswith("error:")]


def test_packaged_facts_are_the_documented_table():
    facts = split_facts.load_facts()
    assert list(facts) == split_facts.split_file_names() and len(facts) == 45
    for name, entry in facts.items():
        split, fold, imb = split_facts._parse_name(name)
        expected = {"train": _recipe_train_counts(float(imb)), "val": [50] * 8, "test": [100] * 8}[split]
        assert entry["class_counts"] == expected, name
        assert entry["rows"] == sum(expected)
        for key in ("ids_sha256", "labelled_ids_sha256"):
            assert len(entry[key]) == 64 and int(entry[key], 16) >= 0
    # Folds and imbalance factors are independent draws: no two files hold the same images.
    assert len({entry["ids_sha256"] for entry in facts.values()}) == 45
    assert _recipe_train_counts(0.002) == [12725, 4372, 2180, 897, 369, 152, 62, 25]


def test_digests_are_the_documented_sha256(tmp_path):
    path = tmp_path / "test_skin1_0.01.csv"
    path.write_text("image,finding_name,finding\nISIC_2_downsampled,0,1\nISIC_10,1,0\nISIC_2,1,0\n")
    table = isic_splits.read_split(str(tmp_path), "test", 1, "0.01")
    facts = split_facts.table_facts(table)
    # Sorted by code point ('1' < '2', and 'ISIC_2' before 'ISIC_2_downsampled'), one line each, newline-ended.
    assert facts["ids_sha256"] == hashlib.sha256(b"ISIC_10\nISIC_2\nISIC_2_downsampled\n").hexdigest()
    assert facts["labelled_ids_sha256"] == hashlib.sha256(b"ISIC_10,0\nISIC_2,0\nISIC_2_downsampled,1\n").hexdigest()
    assert facts["class_counts"] == [2, 1, 0, 0, 0, 0, 0, 0] and facts["rows"] == 3


def test_reader_on_csvs_written_from_the_packaged_counts(written_folder):
    facts = split_facts.load_facts()
    for fold in isic_splits.FOLDS:
        for imb in isic_splits.IMBALANCE_FACTORS:
            tables = {split: isic_splits.read_split(written_folder, split, fold, imb) for split in isic_splits.SPLITS}
            for split, table in tables.items():
                assert (
                    isic_splits.class_counts(table.labels).tolist()
                    == facts[os.path.basename(table.path)]["class_counts"]
                )
            ids = {split: set(table.image_ids) for split, table in tables.items()}
            assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    table = isic_splits.read_split(written_folder, "train", 1, 0.01)
    with open(table.path) as f:
        first = [line.split(",")[0] for line in f.read().splitlines()[1:200]]
    assert list(table.image_ids[:199]) == first and any(i.endswith("_downsampled") for i in first)


def test_verifier_accepts_a_folder_that_matches_its_facts(written_folder, written_facts, tmp_path):
    facts = written_facts
    assert split_facts.compare_folder(written_folder, facts) == []
    # Same counts as the official files, other ids: against the packaged table every file is named, as 'ids'.
    official = split_facts.compare_folder(written_folder)
    assert [(d.name, d.kind) for d in official] == [(name, "ids") for name in split_facts.split_file_names()]

    table = tmp_path / "facts.json"
    wrote = _verify(f"--split_dir={written_folder}", f"--write_facts={table}")
    assert wrote.returncode == 0, wrote.stderr[-2000:]
    assert split_facts.load_facts(str(table)) == facts
    ok = _verify(f"--split_dir={written_folder}", f"--facts={table}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip() == f"OK: all 45 split files in {written_folder} match the official ones"


def test_verifier_names_every_changed_file(written_folder, written_facts, tmp_path):
    facts = written_facts
    changed = str(tmp_path / "changed")
    shutil.copytree(written_folder, changed)

    def edit(name, fn):
        path = os.path.join(changed, name)
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w") as f:
            f.write("\n".join(fn(lines)) + "\n")

    def relabel(line, label):
        image, _, _ = line.split(",")
        return f"{image},{FINDING_NAME[label]},{label}"

    os.remove(os.path.join(changed, "val_skin2_0.005.csv"))  # missing
    edit("train_skin1_0.002.csv", lambda ls: ls[:1] + [relabel(ls[1], (int(ls[1][-1]) + 1) % 8)] + ls[2:])  # counts
    edit("test_skin5_0.01.csv", lambda ls: ls[:1] + ["ISIC_9999999" + ls[1][ls[1].index(",") :]] + ls[2:])  # ids

    def swap_two_labels(lines):  # labels only
        first = next(j for j in range(1, len(lines)) if lines[j].endswith(",0"))
        second = next(j for j in range(1, len(lines)) if lines[j].endswith(",1"))
        lines[first], lines[second] = relabel(lines[first], 1), relabel(lines[second], 0)
        return lines

    edit("val_skin3_0.01.csv", swap_two_labels)
    edit("test_skin4_0.002.csv", lambda ls: ["image,label"] + ls[1:])  # unreadable

    expected = [
        ("train_skin1_0.002.csv", "counts"),
        ("val_skin2_0.005.csv", "missing"),
        ("val_skin3_0.01.csv", "labels"),
        ("test_skin4_0.002.csv", "unreadable"),
        ("test_skin5_0.01.csv", "ids"),
    ]
    differences = split_facts.compare_folder(changed, facts)
    assert [(d.name, d.kind) for d in differences] == expected
    assert "official [" in differences[0].detail and "no 'finding' column" in differences[3].detail

    table = tmp_path / "facts.json"
    split_facts.write_facts(str(table), facts)
    run = _verify(f"--split_dir={changed}", f"--facts={table}")
    assert run.returncode == 1
    assert run.stdout.splitlines() == [str(d) for d in differences]
    errors = _error_lines(run)
    assert len(errors) == 1 and "5 of 45 split files" in errors[0], run.stderr[-2000:]
    assert all(name in errors[0] for name, _ in expected)


def test_verifier_refuses_bad_arguments(tmp_path):
    missing = _verify(f"--split_dir={tmp_path / 'nowhere'}")
    assert missing.returncode == 1 and len(_error_lines(missing)) == 1
    assert "nowhere" in _error_lines(missing)[0] and "is not a folder" in _error_lines(missing)[0]
    (tmp_path / "bad.json").write_text('{"format": 99}')
    bad = _verify(f"--split_dir={tmp_path}", f"--facts={tmp_path / 'bad.json'}")
    assert bad.returncode == 1 and len(_error_lines(bad)) == 1 and "bad.json" in _error_lines(bad)[0]
    # --write_facts of an incomplete folder names the missing file and writes nothing.
    out = tmp_path / "facts.json"
    incomplete = _verify(f"--split_dir={tmp_path}", f"--write_facts={out}")
    assert incomplete.returncode == 1 and "train_skin1_0.01.csv" in _error_lines(incomplete)[0]
    assert not out.exists() and not (tmp_path / "facts.json.tmp").exists()


def test_official_csvs_match_the_packaged_facts(official_split_dir, tmp_path):
    """Runs where $FOPROKD_ISIC_SPLITS names the downloaded official CSVs (CI sets it when it has a copy)."""
    assert split_facts.compare_folder(official_split_dir) == []
    ok = _verify(f"--split_dir={official_split_dir}")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: all 45 split files"), ok.stderr[-2000:]
    # One changed id in a copy is named, and only that file.
    copy = tmp_path / "copy"
    shutil.copytree(official_split_dir, copy)
    path = copy / "val_skin4_0.005.csv"
    lines = path.read_text().splitlines()
    lines[7] = "ISIC_9999999" + lines[7][lines[7].index(",") :]
    path.write_text("\n".join(lines) + "\n")
    run = _verify(f"--split_dir={copy}")
    assert run.returncode == 1 and run.stdout.splitlines() == [
        "val_skin4_0.005.csv: ids: same per-class counts but other image ids"
    ]
