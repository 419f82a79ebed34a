"""Benchmark registry: split rules (sklearn parity, lesion grouping, Hyper-Kvasir groups), loaders, writers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import common
from configs import hyperkvasir as hyperkvasir_config
from foprokd_jax.data import (
    aptos,
    cv_splits,
    ham10000,
    hyperkvasir,
    image_folder_tfds,
    isic_splits,
    label_csv,
    registry,
    synthetic_benchmarks,
    tfds_isic,
)

SIZE = 16
SMALL = dict(image_size=(24, 18))
ISIC_SMALL = dict(n_max=12, val_per_class=2, test_per_class=3, image_sizes=((24, 18),), folds=(1,), imbs=("0.01",))


def sklearn_test_folds(labels, seed, n_splits=5):
    from sklearn.model_selection import StratifiedKFold

    folds = np.full(len(labels), -1)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[test] = k
    return folds


def input_config(dataset, root, **overrides):
    inp = common.base_config().input
    inp.dataset = dataset
    inp.image_root = str(root)
    inp.split_dir = os.path.join(str(root), "splits")
    inp.prepared_dir = os.path.join(str(root), "tfds")
    inp.image_size = SIZE
    inp.update(overrides)
    return inp


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Each benchmark written small and loaded once: name -> (root, summary, LoadedDataset)."""
    out = {}
    for name in registry.DATASETS:
        root = tmp_path_factory.mktemp(name)
        kwargs = ISIC_SMALL if name == "isic2019_lt" else SMALL
        summary = synthetic_benchmarks.write_synthetic(name, str(root), **kwargs)
        out[name] = (root, summary, registry.load_dataset(input_config(name, root)))
    return out


# ----------------------------------------------------------------------------- split rules


@pytest.mark.parametrize("n,num_classes,seed", [(97, 3, 2020), (240, 5, 0), (400, 23, 7)])
def test_stratified_kfold_matches_sklearn(n, num_classes, seed):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, num_classes, n)
    labels[rng.random(n) < 0.4] = num_classes - 1  # imbalanced; class codes first appear out of order
    np.testing.assert_array_equal(
        cv_splits.stratified_kfold_test_folds(labels, 5, seed), sklearn_test_folds(labels, seed)
    )


def test_aptos_reference_fold_sizes():
    # Real class counts (docs/crckd.md §R8); only sizes are fixed by the counts, membership by the row order.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), aptos.REFERENCE_CLASS_COUNTS)[rng.permutation(3662)]
    table = label_csv.LabelTable(image_ids=tuple(f"{i:012x}" for i in range(3662)), labels=labels, origin="t")
    folds = [aptos.make_splits(table, k) for k in range(1, 6)]
    assert [len(f["train"]) for f in folds] == [2929, 2929, 2930, 2930, 2930]
    assert [len(f["test"]) for f in folds] == [733, 733, 732, 732, 732]
    assert all(set(f) == {"train", "test"} for f in folds)  # no validation set by default
    counts = np.stack([np.bincount(labels[f["train"]], minlength=5) for f in folds])
    assert counts[:, 0].tolist() == [1444] * 5 and counts[:, 1].tolist() == [296] * 5
    assert set(counts[:, 2]) <= {799, 800} and set(counts[:, 3]) <= {154, 155} and set(counts[:, 4]) == {236}
    reference = sklearn_test_folds(labels, aptos.REFERENCE_SEED)
    for k, f in enumerate(folds):
        np.testing.assert_array_equal(f["test"], np.flatnonzero(reference == k))


def lesion_table(seed=0, num_lesions=900):
    """A HAM-like table without images: 7 imbalanced classes, lesions of 1-4 images."""
    rng = np.random.default_rng(seed)
    lesion_labels = rng.choice(7, num_lesions, p=[0.11, 0.67, 0.05, 0.03, 0.11, 0.015, 0.015])
    sizes = rng.integers(1, 5, num_lesions)
    groups = np.repeat([f"HAM_{i:07d}" for i in range(num_lesions)], sizes)
    labels = np.repeat(lesion_labels, sizes).astype(np.int32)
    order = rng.permutation(labels.size)
    return label_csv.LabelTable(
        image_ids=tuple(f"ISIC_{i:07d}" for i in range(labels.size)),
        labels=labels[order],
        origin="metadata.csv",
        groups=tuple(groups[order]),
    )


def test_ham_lesion_split_is_grouped_stratified_and_70_10_20():
    table = lesion_table()
    groups, labels, n = np.asarray(table.groups), table.labels, len(table)
    tests = []
    for fold in range(1, 6):
        splits = ham10000.make_splits(table, fold, seed=3)
        assert set(splits) == {"train", "val", "test"}
        split_of_lesion = {}
        for name, rows in splits.items():
            for lesion in set(groups[rows]):
                assert split_of_lesion.setdefault(lesion, name) == name, f"lesion {lesion} straddles splits"
        assert sum(len(r) for r in splits.values()) == n
        for name, target in [("train", 0.7), ("val", 0.1), ("test", 0.2)]:
            assert abs(len(splits[name]) / n - target) < 0.015, (fold, name, len(splits[name]) / n)
            # Class proportions follow the data's within a few lesions (sizes <= 4).
            share = np.bincount(labels[splits[name]], minlength=7) / np.bincount(labels, minlength=7)
            assert np.all(np.abs(share - target) <= 0.06 + 8 / np.bincount(labels, minlength=7)), (name, share)
        tests.append(splits["test"])
        again = ham10000.make_splits(table, fold, seed=3)
        assert all(np.array_equal(again[s], splits[s]) for s in splits)  # deterministic
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(n))  # test folds partition the data
    other = ham10000.make_splits(table, 1, seed=4)
    assert not np.array_equal(other["test"], ham10000.make_splits(table, 1, seed=3)["test"])


def test_ham_image_mode_is_sklearn_and_leaky():
    table = lesion_table(seed=1)
    reference = sklearn_test_folds(table.labels, 11)
    splits = ham10000.make_splits(table, 2, seed=11, split_mode="image")
    np.testing.assert_array_equal(splits["test"], np.flatnonzero(reference == 1))
    groups = np.asarray(table.groups)
    assert set(groups[splits["train"]]) & set(groups[splits["test"]])  # what 'lesion' mode prevents


def test_validation_carve_is_stratified_and_inside_the_training_fold():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(5), [300, 60, 160, 30, 50])[rng.permutation(600)]
    table = label_csv.LabelTable(image_ids=tuple(map(str, range(600))), labels=labels, origin="t")
    plain = aptos.make_splits(table, 3)
    with_val = aptos.make_splits(table, 3, val_fraction=0.1)
    np.testing.assert_array_equal(with_val["test"], plain["test"])  # the test fold does not move
    np.testing.assert_array_equal(np.sort(np.concatenate([with_val["train"], with_val["val"]])), plain["train"])
    target = 0.1 / 0.8 * np.bincount(labels[plain["train"]], minlength=5)
    assert np.all(np.abs(np.bincount(labels[with_val["val"]], minlength=5) - target) <= 1)


def test_hyperkvasir_classes_and_head_medium_tail_groups():
    assert hyperkvasir.CLASS_NAMES == tuple(sorted(hyperkvasir.CLASS_NAMES)) and len(hyperkvasir.CLASS_NAMES) == 23
    real = np.asarray([hyperkvasir.CLASS_TREE[c][2] for c in hyperkvasir.CLASS_NAMES])
    assert real.sum() == 10662
    labels = np.repeat(np.arange(23), real)
    table = label_csv.LabelTable(image_ids=tuple(map(str, range(labels.size))), labels=labels, origin="tree")
    for fold in (1, 5):
        splits = hyperkvasir.make_splits(table, fold, seed=2020)
        assert set(np.unique(labels[splits["test"]])) == set(range(23))  # even hemorrhoids (6 images)
        groups = hyperkvasir.class_groups(np.bincount(labels[splits["train"]], minlength=23))
        assert set(groups["head"]) == {
            "bbps-2-3",
            "cecum",
            "dyed-lifted-polyps",
            "dyed-resection-margins",
            "polyps",
            "pylorus",
            "z-line",
        }
        assert set(groups["tail"]) == {
            "barretts",
            "barretts-short-segment",
            "hemorrhoids",
            "ileum",
            "ulcerative-colitis-grade-0-1",
            "ulcerative-colitis-grade-1-2",
            "ulcerative-colitis-grade-2-3",
        }
        assert len(groups["medium"]) == 9
        from foprokd_jax import metrics

        assert metrics.assign_frequency_groups(
            np.bincount(labels[splits["train"]], minlength=23), hyperkvasir.CLASS_NAMES
        ) == {k: v for k, v in groups.items() if v}


# ----------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("name", registry.DATASETS)
def test_load_dataset_sources_ids_and_describe(datasets, name):
    root, summary, ds = datasets[name]
    expected_splits = {
        "isic2019_lt": {"train", "val", "test"},
        "ham10000": {"train", "val", "test"},
        "aptos": {"train", "test"},
        "hyperkvasir": {"train", "test"},
    }[name]
    assert ds.name == name and set(ds.sources) == expected_splits == set(ds.ids)
    assert ds.num_classes == len(summary["class_names"])
    total = sum(len(s) for s in ds.sources.values())
    if name != "isic2019_lt":  # the 5-fold benchmarks use every image exactly once per fold
        assert total == summary["num_images"]
        assert len(set(np.concatenate(list(ds.ids.values())))) == total
    for split, source in ds.sources.items():
        assert len(ds.ids[split]) == len(source) == ds.describe["split_sizes"][split]
        example = source[len(source) - 1]
        assert example["image"].shape == (SIZE, SIZE, 3) and example["image"].dtype == np.uint8
        assert isinstance(example["label"], np.int32)
        store = source.store  # the record is the listed image, resized once (no other image by mistake)
        assert store.image_ids[source.record_indices[-1]] == ds.ids[split][-1]
    np.testing.assert_array_equal(ds.train_labels, ds.sources["train"].labels)
    assert ds.train_counts.sum() == len(ds.sources["train"]) and ds.train_counts.min() > 0
    json.dumps(ds.describe)  # recorded in results.json
    assert ds.describe["image_size"] == SIZE and ds.describe["skipped_images"] == 0


def test_records_are_the_files_resized(datasets):
    root, _, ds = datasets["aptos"]  # PNG
    source = ds.sources["test"]
    for i in (0, len(source) - 1):
        path = os.path.join(root, "train_images", f"{ds.ids['test'][i]}.png")
        np.testing.assert_array_equal(source[i]["image"], image_folder_tfds.load_resized(path, SIZE))
    table = aptos.read_labels(os.path.join(root, "train.csv"))
    label_of = dict(zip(table.image_ids, table.labels.tolist()))
    assert [label_of[i] for i in ds.ids["test"]] == source.labels.tolist()
    assert list(ds.ids["test"]) == sorted(ds.ids["test"], key=table.image_ids.index)  # CSV row order kept


def test_isic_entry_is_the_official_split_path(datasets):
    root, summary, ds = datasets["isic2019_lt"]
    for split in isic_splits.SPLITS:
        table = isic_splits.read_split(summary["split_dir"], split, 1, "0.01")
        direct = tfds_isic.IsicSplitSource(table, tfds_isic.prepare_isic(None, str(root / "tfds"), SIZE))
        assert list(ds.ids[split]) == list(table.image_ids)
        np.testing.assert_array_equal(ds.sources[split].labels, table.labels)
        np.testing.assert_array_equal(ds.sources[split][3]["image"], direct[3]["image"])
    assert ds.class_names == isic_splits.CLASS_NAMES and ds.describe["imb"] == "0.01"


def test_synthetic_signal_is_learnable(datasets):
    # Nearest class mean on raw 16x16 pixels: far above chance on the test fold.
    _, _, ds = datasets["hyperkvasir"]

    def arrays(source):
        return (
            np.stack([source[i]["image"] for i in range(len(source))]).reshape(len(source), -1) / 255.0,
            source.labels,
        )

    x_train, y_train = arrays(ds.sources["train"])
    x_test, y_test = arrays(ds.sources["test"])
    means = np.stack([x_train[y_train == c].mean(0) for c in range(ds.num_classes)])
    predicted = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == y_test) > 0.5  # chance: 1/23


def test_writers_are_deterministic_and_use_the_real_layouts(datasets, tmp_path):
    for name, relpaths in [("ham10000", ["HAM10000_metadata.csv"]), ("aptos", ["train.csv"])]:
        root, summary, _ = datasets[name]
        again = synthetic_benchmarks.write_synthetic(name, str(tmp_path / name), **SMALL)
        paths = {"image_root", "label_csv"}
        assert {k: v for k, v in again.items() if k not in paths} == {
            k: v for k, v in summary.items() if k not in paths
        }
        for rel in relpaths:
            assert (root / rel).read_bytes() == (tmp_path / name / rel).read_bytes()
    root, _, ds = datasets["ham10000"]
    assert {len(os.listdir(root / d)) for d in ham10000.IMAGE_DIRS} != {0}
    table = ham10000.read_metadata(str(root / "HAM10000_metadata.csv"))
    assert len(set(table.groups)) < len(table)  # some lesions have several images
    root, _, _ = datasets["hyperkvasir"]
    tree = root / "labeled-images"
    assert sorted(os.listdir(tree)) == ["lower-gi-tract", "upper-gi-tract"]
    assert os.path.isdir(tree / "upper-gi-tract" / "pathological-findings" / "barretts-short-segment")


def test_make_synthetic_dataset_cli(tmp_path):
    launcher = os.path.join(os.path.dirname(__file__), "..", "launch", "make_synthetic_dataset.py")
    r = subprocess.run(
        [sys.executable, launcher, "--dataset=aptos", f"--out={tmp_path}", "--scale=0.003", "--image_size=20x16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["class_counts"] == [10, 10, 10, 10, 10] and summary["config"]["input.dataset"] == "aptos"
    assert len(os.listdir(tmp_path / "train_images")) == 50 and summary["num_images"] == 50
    bad = subprocess.run(
        [sys.executable, launcher, "--dataset=aptos", f"--out={tmp_path}/b", "--image_size=20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: --image_size='20'")


def test_hyperkvasir_config():
    config = hyperkvasir_config.get_config("method=bsm,fold=3")
    assert (config.input.dataset, config.input.fold, config.eval.protocol) == ("hyperkvasir", 3, "test_last")
    config = hyperkvasir_config.get_config("val=0.1,runlocal")
    assert config.input.val_fraction == 0.1 and config.eval.protocol == "val_test" and config.total_steps > 0
    for bad in ["fold=6", "val=0.9", "method=crd", "imb=0.01"]:
        with pytest.raises((KeyError, ValueError)):
            hyperkvasir_config.get_config(bad)
