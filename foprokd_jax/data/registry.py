"""Dataset registry: `load_dataset(config.input)` -> `LoadedDataset`, whatever the benchmark.

The training loop, evaluation and prediction tools only see this interface; each benchmark (ISIC-2019-LT,
HAM10000, APTOS 2019, Hyper-Kvasir) provides a loader that prepares its images once (tfds array_record) and
returns the split sources.

Benchmarks (`input.dataset`; docs/datasets.md):
- 'isic2019_lt': the official FoPro-KD split CSVs (input.split_dir, fold, imb), train/val/test.
- 'ham10000': HAM10000_metadata.csv + images; seeded 5-fold, lesion-grouped by default, 70/10/20.
- 'aptos': APTOS 2019 train.csv + PNGs; CRCKD's StratifiedKFold(5, shuffle, 2020); train/test (+ optional val).
- 'hyperkvasir': the labeled-images tree, 23 classes; seeded stratified 5-fold; train/test (+ optional val).
Every split's source yields {'image': uint8 (S, S, 3), 'label': int32} in the split's file order.
"""

import dataclasses
import logging
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from foprokd_jax.data import (
    aptos,
    cv_splits,
    ham10000,
    hyperkvasir,
    image_folder_tfds,
    isic_splits,
    label_csv,
    tfds_isic,
)


@dataclasses.dataclass
class LoadedDataset:
    """A benchmark's splits, ready for the input pipeline.

    sources: split name ('train', 'val', 'test'; 'val' may be absent, e.g. APTOS has no validation set) ->
        grain-compatible random-access source: `len(src)`, `src[i] -> {'image': uint8 (S, S, 3),
        'label': int32 scalar}` in a fixed order.
    ids: split name -> array of the image identifiers of `sources[split]`, in the same order (for
        per-image prediction files).
    train_labels: int32 labels of sources['train'] in order (samplers, memory banks, class counts).
    describe: JSON-able facts recorded in results.json (split files, fold, seeds, ...).
    """

    name: str
    class_names: Tuple[str, ...]
    sources: Dict[str, Any]
    ids: Dict[str, np.ndarray]
    train_labels: np.ndarray
    describe: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(np.asarray(self.train_labels), minlength=self.num_classes).astype(np.int64)

    def split(self, name: str) -> Optional[Any]:
        return self.sources.get(name)


DATASETS = ("isic2019_lt", "ham10000", "aptos", "hyperkvasir")
SPLIT_ORDER = ("train", "val", "test")


def _val_fraction(input_config, default: float) -> float:
    """input.val_fraction, where a negative value means the dataset's documented default."""
    value = float(input_config.val_fraction)
    return default if value < 0 else value


def _split_summary(sources: Dict[str, Any], num_classes: int) -> dict:
    return {
        "split_sizes": {s: len(src) for s, src in sources.items()},
        "split_class_counts": {
            s: np.bincount(src.labels, minlength=num_classes).tolist() for s, src in sources.items()
        },
    }


def _skipped_summary(store, policy: str, data_dir: str, builder_name: str) -> dict:
    out = {"bad_image_policy": policy, "skipped_images": len(store.bad_images)}
    if store.bad_images:
        out["bad_image_report"] = image_folder_tfds.report_path(data_dir, builder_name, store.image_size)
    return out


def _load_isic(inp) -> LoadedDataset:
    """ISIC-2019-LT: the official split CSVs `{split}_skin{fold}_{imb}.csv` (docs/reference_semantics.md §8.1)."""
    tables = {split: isic_splits.read_split(inp.split_dir, split, inp.fold, inp.imb) for split in SPLIT_ORDER}
    cv_splits.check_disjoint({s: t.image_ids for s, t in tables.items()}, {s: t.path for s, t in tables.items()})
    policy = inp.bad_image_policy
    store = tfds_isic.prepare_isic(inp.image_root, inp.prepared_dir, inp.image_size, policy)
    sources = {}
    for split, table in tables.items():
        image_ids, labels = image_folder_tfds.drop_bad_images(table.image_ids, table.labels, store, table.path)
        table = isic_splits.SplitTable(image_ids=image_ids, labels=labels, path=table.path)
        sources[split] = tfds_isic.IsicSplitSource(table, store)
    describe = {
        "dataset": "isic2019_lt",
        "split_files": {s: t.path for s, t in tables.items()},
        "fold": int(inp.fold),
        "imb": isic_splits.format_imbalance(inp.imb),
        "split_rule": "official FoPro-KD long-tailed split CSVs (docs/reference_semantics.md §8.1)",
        "image_root": inp.image_root,
        "prepared": store.dataset_dir,
        "image_size": store.image_size,
        **_split_summary(sources, isic_splits.NUM_CLASSES),
        **_skipped_summary(store, policy, inp.prepared_dir, tfds_isic.DATASET_NAME),
    }
    return LoadedDataset(
        name="isic2019_lt",
        class_names=isic_splits.CLASS_NAMES,
        sources=sources,
        ids={s: np.asarray(src.table.image_ids) for s, src in sources.items()},
        train_labels=sources["train"].labels.copy(),
        describe=describe,
    )


def _from_table(
    name: str,
    class_names,
    table: label_csv.LabelTable,
    rows: Dict[str, np.ndarray],
    builder_cls,
    items,
    inp,
    describe: dict,
) -> LoadedDataset:
    """Prepares the table's images once and joins each split's rows to them (file order kept)."""
    policy = inp.bad_image_policy
    split_ids = {s: [table.image_ids[i] for i in rows[s]] for s in SPLIT_ORDER if s in rows}
    origin = {s: f"{table.origin} ({s} split of fold {inp.fold})" for s in split_ids}
    cv_splits.check_disjoint(split_ids, origin)
    store = image_folder_tfds.prepare_images(builder_cls, items, inp.prepared_dir, inp.image_size, policy)
    sources = {}
    for split, image_ids in split_ids.items():
        kept_ids, labels = image_folder_tfds.drop_bad_images(image_ids, table.labels[rows[split]], store, origin[split])
        sources[split] = image_folder_tfds.StoreSource(kept_ids, labels, store, origin[split])
    describe = {
        "dataset": name,
        "source": table.origin,
        "image_root": inp.image_root,
        "fold": int(inp.fold),
        "num_folds": 5,
        "split_seed": int(inp.split_seed),
        **describe,
        "prepared": store.dataset_dir,
        "image_size": store.image_size,
        **_split_summary(sources, len(class_names)),
        **_skipped_summary(store, policy, inp.prepared_dir, builder_cls.name),
    }
    return LoadedDataset(
        name=name,
        class_names=tuple(class_names),
        sources=sources,
        ids={s: np.asarray(src.image_ids) for s, src in sources.items()},
        train_labels=sources["train"].labels.copy(),
        describe=describe,
    )


def _label_csv(inp, default_name: str) -> str:
    return inp.label_csv or os.path.join(inp.image_root, default_name)


def _load_ham10000(inp) -> LoadedDataset:
    table = ham10000.read_metadata(_label_csv(inp, ham10000.METADATA_CSV))
    mode = inp.split_mode
    val_fraction = _val_fraction(inp, ham10000.DEFAULT_VAL_FRACTION)
    rows = ham10000.make_splits(table, int(inp.fold), int(inp.split_seed), mode, val_fraction)
    rule = (
        "lesion-grouped stratified 5-fold (every lesion_id in one split)"
        if mode == "lesion"
        else "image-level StratifiedKFold(5, shuffle=True, random_state=split_seed) over the metadata rows; LEAKY: "
        "images of one lesion can be in train and test"
    )
    describe = {
        "split_mode": mode,
        "val_fraction": val_fraction,
        "split_rule": f"{rule}; test = fold k; val = val_fraction of all images from the other folds",
        "num_lesions": len(set(table.groups)),
    }
    return _from_table(
        "ham10000",
        ham10000.CLASS_NAMES,
        table,
        rows,
        ham10000.Ham10000Resized,
        lambda: ham10000.image_files(inp.image_root, table),
        inp,
        describe,
    )


def _load_aptos(inp) -> LoadedDataset:
    table = aptos.read_labels(_label_csv(inp, aptos.LABEL_CSV))
    val_fraction = _val_fraction(inp, aptos.DEFAULT_VAL_FRACTION)
    rows = aptos.make_splits(table, int(inp.fold), int(inp.split_seed), val_fraction)
    describe = {
        "val_fraction": val_fraction,
        "split_rule": "StratifiedKFold(5, shuffle=True, random_state=split_seed) over train.csv rows, "
        "test = fold k (CRCKD cv_splits.py; reference seed 2020)",
    }
    return _from_table(
        "aptos",
        aptos.CLASS_NAMES,
        table,
        rows,
        aptos.AptosResized,
        lambda: aptos.image_files(inp.image_root, table),
        inp,
        describe,
    )


def _load_hyperkvasir(inp) -> LoadedDataset:
    table = hyperkvasir.scan_tree(inp.image_root)
    val_fraction = _val_fraction(inp, hyperkvasir.DEFAULT_VAL_FRACTION)
    rows = hyperkvasir.make_splits(table, int(inp.fold), int(inp.split_seed), val_fraction)
    fold_counts = np.bincount(np.delete(table.labels, rows["test"]), minlength=len(hyperkvasir.CLASS_NAMES))
    describe = {
        "val_fraction": val_fraction,
        "split_rule": "StratifiedKFold(5, shuffle=True, random_state=split_seed) over the images in sorted "
        "path order, test = fold k (Balanced-MixUp protocol, docs/reference_semantics.md §8.3)",
        "training_fold_counts": fold_counts.tolist(),
        "class_groups": hyperkvasir.class_groups(fold_counts),
        "class_groups_rule": f"head > {hyperkvasir.HEAD_MIN}, tail < {hyperkvasir.TAIL_MAX} images in the "
        "training fold (before any val carve)",
    }
    return _from_table(
        "hyperkvasir",
        hyperkvasir.CLASS_NAMES,
        table,
        rows,
        hyperkvasir.HyperKvasirResized,
        lambda: hyperkvasir.image_files(table),
        inp,
        describe,
    )


LOADERS = {
    "isic2019_lt": _load_isic,
    "ham10000": _load_ham10000,
    "aptos": _load_aptos,
    "hyperkvasir": _load_hyperkvasir,
}


def load_dataset(input_config) -> LoadedDataset:
    """The benchmark named by `input_config.dataset`, prepared (once) and split for `input_config.fold`.

    Raises ValueError (or a FileNotFoundError subclass for missing files) with the file, row or value at
    fault; a failed preparation leaves no dataset behind (image_folder_tfds).
    """
    name = input_config.dataset
    if name not in LOADERS:
        raise ValueError(f"input.dataset={name!r} is not one of {DATASETS}")
    policy = input_config.bad_image_policy
    if policy not in image_folder_tfds.BAD_IMAGE_POLICIES:
        raise ValueError(f"input.bad_image_policy={policy!r} is not one of {image_folder_tfds.BAD_IMAGE_POLICIES}")
    if int(input_config.image_size) <= 0:
        raise ValueError(f"input.image_size={input_config.image_size} must be positive")
    dataset = LOADERS[name](input_config)
    logging.info("%s fold %s: %s", name, input_config.fold, dataset.describe["split_sizes"])
    return dataset
