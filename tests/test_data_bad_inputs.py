"""Bad inputs to the benchmarks: each is a clear error naming the file/row/value, and nothing half-written.

Covers missing listed images, corrupt/truncated JPEG/PNG (policies 'fail' and 'skip'), label CSVs with an
unknown label or a missing column, leakage between splits, bad Hyper-Kvasir trees, bad config values, and
interrupted preparations (Ctrl-C and SIGKILL).
"""

import csv
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs import common
from foprokd_jax.data import (
    aptos,
    cv_splits,
    ham10000,
    hyperkvasir,
    image_folder_tfds,
    isic_splits,
    label_csv,
    registry,
    synthetic,
    synthetic_benchmarks,
    tfds_isic,
)

SIZE = 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDERS = {
    "ham10000": ham10000.Ham10000Resized,
    "aptos": aptos.AptosResized,
    "hyperkvasir": hyperkvasir.HyperKvasirResized,
    "isic2019_lt": tfds_isic.IsicResized,
}


def write(name, root, **kwargs):
    if name == "isic2019_lt":
        return synthetic.write_synthetic_isic(
            str(root), n_max=8, val_per_class=1, test_per_class=2, image_sizes=((24, 18),), folds=(1,), imbs=("0.01",)
        )
    return synthetic_benchmarks.write_synthetic(name, str(root), image_size=(24, 18), **kwargs)


def input_config(name, root, **overrides):
    inp = common.base_config().input
    inp.update(
        dict(
            dataset=name,
            image_root=str(root),
            split_dir=os.path.join(str(root), "splits"),
            prepared_dir=os.path.join(str(root), "tfds"),
            image_size=SIZE,
        )
    )
    inp.update(overrides)
    return inp


def assert_nothing_prepared(root, name):
    prepared = os.path.join(str(root), "tfds")
    assert not image_folder_tfds.is_prepared(BUILDERS[name], prepared, SIZE)
    assert not glob.glob(os.path.join(prepared, "**", "incomplete*"), recursive=True)


def rewrite_csv(path, edit):
    """Rewrites a CSV through `edit(header, rows) -> (header, rows)`."""
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    header, rows = edit(header, rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def listed_image(name, root, row):
    """(image id, path) of the image on CSV data row `row` (0-based)."""
    if name == "ham10000":
        table = ham10000.read_metadata(str(root / ham10000.METADATA_CSV))
        return table.image_ids[row], dict(ham10000.image_files(str(root), table))[table.image_ids[row]]
    table = aptos.read_labels(str(root / aptos.LABEL_CSV))
    return table.image_ids[row], str(root / aptos.IMAGE_DIR / f"{table.image_ids[row]}.png")


# ----------------------------------------------------------------------------- image files


@pytest.mark.parametrize("name,csv_name", [("ham10000", "HAM10000_metadata.csv"), ("aptos", "train.csv")])
def test_missing_listed_image_names_csv_line_and_id(tmp_path, name, csv_name):
    write(name, tmp_path)
    image_id, path = listed_image(name, tmp_path, row=4)
    os.remove(path)
    with pytest.raises(image_folder_tfds.MissingImageError, match=rf"{csv_name}.*line 6, '{image_id}'") as info:
        registry.load_dataset(input_config(name, tmp_path))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert_nothing_prepared(tmp_path, name)


def corrupt(tmp_path, name):
    """Truncates one listed image and replaces another with garbage; returns their ids."""
    first_id, first = listed_image(name, tmp_path, row=2)
    second_id, second = listed_image(name, tmp_path, row=7)
    data = open(first, "rb").read()
    with open(first, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    with open(second, "wb") as f:
        f.write(b"not an image at all")
    return {first_id, second_id}


@pytest.mark.parametrize("name", ["ham10000", "aptos"])  # JPEG and PNG
def test_corrupt_images_fail_policy_reports_them_and_prepares_nothing(tmp_path, name):
    write(name, tmp_path)
    bad = corrupt(tmp_path, name)
    with pytest.raises(image_folder_tfds.BadImagesError, match="2 of .* could not be read") as info:
        registry.load_dataset(input_config(name, tmp_path))
    assert all(image_id in str(info.value) for image_id in bad)
    report_file = image_folder_tfds.report_path(str(tmp_path / "tfds"), BUILDERS[name].name, SIZE)
    with open(report_file) as f:
        report = json.load(f)
    assert {b["image_id"] for b in report["bad_images"]} == bad and all(b["reason"] for b in report["bad_images"])
    assert report["policy"] == "fail"
    assert_nothing_prepared(tmp_path, name)
    write(name, tmp_path)  # the same images again, intact: the next run prepares and drops the stale report
    assert registry.load_dataset(input_config(name, tmp_path)).describe["skipped_images"] == 0
    assert not os.path.exists(report_file)


def test_corrupt_images_skip_policy_drops_them_with_a_warning(tmp_path, caplog):
    summary = write("ham10000", tmp_path)
    bad = corrupt(tmp_path, "ham10000")
    with caplog.at_level(logging.WARNING):
        ds = registry.load_dataset(input_config("ham10000", tmp_path, bad_image_policy="skip"))
    listed = set(np.concatenate(list(ds.ids.values())))
    assert not listed & bad and len(listed) == summary["num_images"] - 2
    assert ds.describe["skipped_images"] == 2 and os.path.isfile(ds.describe["bad_image_report"])
    assert any("dropped" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # A store prepared without some images is refused when every image is required.
    with pytest.raises(image_folder_tfds.BadImagesError, match="bad_image_policy='skip'"):
        registry.load_dataset(input_config("ham10000", tmp_path))


def test_skipped_images_that_empty_trailing_parts(tmp_path, monkeypatch):
    write("aptos", tmp_path)
    table = aptos.read_labels(str(tmp_path / "train.csv"))
    items = sorted(aptos.image_files(str(tmp_path), table))
    for _, path in items[-5:]:
        with open(path, "wb") as f:
            f.write(b"\x89PNG broken")
    monkeypatch.setattr(image_folder_tfds, "PART_BYTES", 2 * SIZE * SIZE * 3)  # 2 images per part
    store = image_folder_tfds.prepare_images(aptos.AptosResized, items, str(tmp_path / "tfds"), SIZE, "skip")
    assert store.image_ids == tuple(i for i, _ in items[:-5]) and store.padding_records >= 2
    np.testing.assert_array_equal(store.get(len(store) - 1), image_folder_tfds.load_resized(items[-6][1], SIZE))
    with pytest.raises(image_folder_tfds.MissingImageError, match=items[-1][0]):
        image_folder_tfds.StoreSource([items[-1][0]], [0], store, "test rows")


# ----------------------------------------------------------------------------- label files and splits


def _set_cell(column, row, value):
    def edit(header, rows):
        rows[row][header.index(column)] = value
        return header, rows

    return edit


def _drop_column(column):
    def edit(header, rows):
        k = header.index(column)
        return header[:k] + header[k + 1 :], [r[:k] + r[k + 1 :] for r in rows]

    return edit


def _duplicate_row(row):
    def edit(header, rows):
        return header, rows + [rows[row]]

    return edit


@pytest.mark.parametrize(
    "name,csv_name,edit,match",
    [
        ("ham10000", "HAM10000_metadata.csv", _set_cell("dx", 2, "melanoma"), r"line 4: unknown dx 'melanoma'"),
        ("ham10000", "HAM10000_metadata.csv", _drop_column("lesion_id"), r"no 'lesion_id' column"),
        ("ham10000", "HAM10000_metadata.csv", _duplicate_row(3), r"image_id 'ISIC_\d+' is listed again .*line 5"),
        ("aptos", "train.csv", _set_cell("diagnosis", 0, "7"), r"line 2: diagnosis '7' is not an integer in \[0, 5\)"),
        ("aptos", "train.csv", _set_cell("diagnosis", 5, "2.0"), r"line 7: diagnosis '2.0'"),
        ("aptos", "train.csv", _drop_column("diagnosis"), r"no 'diagnosis' column"),
    ],
)
def test_label_csv_errors_name_file_line_and_value(tmp_path, name, csv_name, edit, match):
    write(name, tmp_path)
    rewrite_csv(str(tmp_path / csv_name), edit)
    with pytest.raises(label_csv.LabelFileError, match=rf"{csv_name}.*{match}"):
        registry.load_dataset(input_config(name, tmp_path))
    assert_nothing_prepared(tmp_path, name)


def test_isic_unknown_label_and_leakage_are_refused(tmp_path):
    summary = write("isic2019_lt", tmp_path)
    test_csv = os.path.join(summary["split_dir"], "test_skin1_0.01.csv")
    train_csv = os.path.join(summary["split_dir"], "train_skin1_0.01.csv")
    with open(train_csv) as f:
        leaked = f.read().splitlines()[1]
    with open(test_csv, "a") as f:
        f.write(leaked + "\n")
    with pytest.raises(
        cv_splits.LeakageError,
        match=r"1 image\(s\) are in both the 'train' split .*train_skin1_0.01"
        r".*test_skin1_0.01.*" + leaked.split(",")[0],
    ):
        registry.load_dataset(input_config("isic2019_lt", tmp_path))
    rewrite_csv(test_csv, _set_cell("finding", 0, "8"))
    with pytest.raises(isic_splits.SplitFileError, match="outside"):
        registry.load_dataset(input_config("isic2019_lt", tmp_path))
    assert_nothing_prepared(tmp_path, "isic2019_lt")


def test_check_disjoint_names_both_splits():
    cv_splits.check_disjoint({"train": ["a", "b"], "test": ["c"]}, {})
    with pytest.raises(cv_splits.LeakageError, match=r"'val' split \(v.csv\) and the 'test' split \(t.csv\).*'c'"):
        cv_splits.check_disjoint({"train": ["a"], "val": ["c"], "test": ["c", "d"]}, {"val": "v.csv", "test": "t.csv"})


def test_lesion_with_two_diagnoses_and_id_naming_two_files(tmp_path):
    write("ham10000", tmp_path)
    table = ham10000.read_metadata(str(tmp_path / ham10000.METADATA_CSV))
    lesion = next(g for g in table.groups if table.groups.count(g) > 1)
    second_row = [k for k, g in enumerate(table.groups) if g == lesion][1]
    other = "df" if table.labels[second_row] != ham10000.DX_CODES.index("df") else "nv"
    rewrite_csv(str(tmp_path / ham10000.METADATA_CSV), _set_cell("dx", second_row, other))
    with pytest.raises(
        label_csv.LabelFileError,
        match=rf"HAM10000_metadata.csv line {second_row + 2}: lesion "
        rf"'{lesion}' has dx '{other}' here",
    ):
        registry.load_dataset(input_config("ham10000", tmp_path))
    with pytest.raises(ValueError, match=r"group 'L1' has rows with different labels \(\[0, 1\]\)"):
        cv_splits.stratified_group_kfold_test_folds([0, 1, 1], ["L1", "L1", "L2"])
    with pytest.raises(image_folder_tfds.ImageFileError, match=r"1 image id\(s\) name several files.*\['a'\]"):
        image_folder_tfds.prepare_images(
            aptos.AptosResized, [("a", "x.png"), ("a", "y.png"), ("b", "z.png")], str(tmp_path / "tfds"), SIZE
        )
    assert_nothing_prepared(tmp_path, "ham10000")


def test_hyperkvasir_tree_errors(tmp_path):
    write("hyperkvasir", tmp_path)
    tree = tmp_path / "labeled-images"
    barretts = tree / "upper-gi-tract" / "pathological-findings" / "barretts"
    stray = tree / "upper-gi-tract" / "pathological-findings" / "barret"
    os.rename(barretts, stray)  # a misspelt class folder
    with pytest.raises(label_csv.LabelFileError, match=r"barret.*not a Hyper-Kvasir class"):
        registry.load_dataset(input_config("hyperkvasir", tmp_path))
    shutil.rmtree(stray)
    with pytest.raises(label_csv.LabelFileError, match=r"no images of the class\(es\) \['barretts'\]"):
        registry.load_dataset(input_config("hyperkvasir", tmp_path))
    shutil.copytree(tree / "lower-gi-tract" / "anatomical-landmarks" / "ileum", barretts)  # same ids twice
    with pytest.raises(label_csv.LabelFileError, match="appears twice"):
        registry.load_dataset(input_config("hyperkvasir", tmp_path))
    assert_nothing_prepared(tmp_path, "hyperkvasir")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("dataset", "kvasir", r"'kvasir' is not one of \('isic2019_lt', 'ham10000', 'aptos', 'hyperkvasir'\)"),
        ("split_mode", "patient", r"split_mode='patient'"),
        ("bad_image_policy", "ignore", r"bad_image_policy='ignore'"),
        ("val_fraction", 0.85, r"val_fraction=0.85"),
        ("fold", 6, r"fold=6 must be in 1..5"),
        ("fold", 0, r"fold=0 must be in 1..5"),
    ],
)
def test_bad_config_values(tmp_path, key, value, match):
    write("ham10000", tmp_path)
    with pytest.raises(ValueError, match=match):
        registry.load_dataset(input_config("ham10000", tmp_path, **{key: value}))
    assert_nothing_prepared(tmp_path, "ham10000")


# ----------------------------------------------------------------------------- interrupted preparation


def test_ctrl_c_during_preparation_leaves_nothing(tmp_path, monkeypatch):
    write("aptos", tmp_path)
    real_load, calls = image_folder_tfds._try_load, []

    def interrupted_load(path, size):
        calls.append(path)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_load(path, size)

    monkeypatch.setattr(image_folder_tfds, "PREPARE_WORKERS", 1)
    monkeypatch.setattr(image_folder_tfds, "_try_load", interrupted_load)
    with pytest.raises(KeyboardInterrupt):
        registry.load_dataset(input_config("aptos", tmp_path))
    assert_nothing_prepared(tmp_path, "aptos")
    monkeypatch.setattr(image_folder_tfds, "_try_load", real_load)
    assert len(registry.load_dataset(input_config("aptos", tmp_path)).sources["test"]) > 0


def test_killed_preparation_never_looks_complete(tmp_path):
    write("aptos", tmp_path)
    code = (
        "import sys, time\n"
        "from configs import common\n"
        "from foprokd_jax.data import image_folder_tfds as ift, registry\n"
        "real = ift._try_load\n"
        "def slow(path, size):\n"
        "    print('decoding', flush=True); time.sleep(0.05); return real(path, size)\n"
        "ift.PREPARE_WORKERS = 1; ift._try_load = slow\n"
        "inp = common.base_config().input\n"
        "inp.update(dict(dataset='aptos', image_root=sys.argv[1], prepared_dir=sys.argv[1] + '/tfds',\n"
        "                image_size=16))\n"
        "registry.load_dataset(inp)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        decoded = 0
        while decoded < 5:  # well inside the preparation (TFDS prints its own lines too)
            line = proc.stdout.readline()
            assert line, "the preparing process ended early"
            decoded += line.strip() == "decoding"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    leftovers = glob.glob(str(tmp_path / "tfds" / "aptos2019_resized" / f"size{SIZE}" / "incomplete*"))
    assert leftovers  # killed mid-way: no cleanup ran ...
    assert not image_folder_tfds.is_prepared(aptos.AptosResized, str(tmp_path / "tfds"), SIZE)  # ... not complete
    ds = registry.load_dataset(input_config("aptos", tmp_path))  # and a rerun prepares everything
    assert sum(len(s) for s in ds.sources.values()) == len(os.listdir(tmp_path / "train_images"))


def test_train_launcher_exits_nonzero_with_the_message(tmp_path):
    write("aptos", tmp_path, scale=0.003)  # 5 x 10 images
    image_id, path = listed_image("aptos", tmp_path, row=0)
    os.remove(path)
    args = [
        sys.executable,
        os.path.join(REPO, "launch", "train.py"),
        "--config=configs/isic.py:runlocal,method=bsm",
        "--config.input.dataset=aptos",
        f"--config.input.image_root={tmp_path}",
        f"--config.input.prepared_dir={tmp_path / 'tfds'}",
        "--config.eval.protocol=test_last",
        f"--workdir={tmp_path / 'work'}",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: 1 of 50 images listed in {tmp_path / 'train.csv'}" in result.stderr
    assert f"line 2, '{image_id}'" in result.stderr
