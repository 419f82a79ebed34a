"""APTOS 2019 Blindness Detection (Kaggle): labels, image files and CRCKD's 5-fold split (docs/crckd.md §R8).

Download layout (`image_root`): `train.csv` (columns id_code, diagnosis) and `train_images/<id_code>.png`;
3662 fundus images graded 0-4.

Split: fold k in 1..5 is the k-th test fold of scikit-learn's
`StratifiedKFold(n_splits=5, shuffle=True, random_state=2020)` over the CSV rows in file order, the
reference's `cv_splits.py`; reimplemented in numpy (`cv_splits.stratified_kfold_test_folds`, tested for
equal membership against scikit-learn). Fold sizes for the real 3662 rows: train 2929/2929/2930/2930/2930,
test 733/733/732/732/732. The membership depends on the row order, so keep Kaggle's `train.csv` order.
There is no validation set in the reference (the test fold is monitored every epoch): the splits are
'train' and 'test'; `val_fraction` > 0 carves a seeded stratified 'val' (that fraction of ALL images) out
of the training fold.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from foprokd_jax.data import cv_splits, label_csv
from foprokd_jax.data.image_folder_tfds import ResizedImagesBuilder

LABEL_CSV = "train.csv"
IMAGE_DIR = "train_images"
CLASS_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")
# The real train.csv's class counts (docs/crckd.md §R8; CRCKD's CE weights are 3662 / these).
REFERENCE_CLASS_COUNTS = (1805, 370, 999, 193, 295)
NUM_FOLDS = 5
REFERENCE_SEED = 2020
DEFAULT_VAL_FRACTION = 0.0
HINT = (
    "Download the APTOS 2019 training data (kaggle.com/competitions/aptos2019-blindness-detection) and "
    "unpack train.csv and train_images/ into input.image_root."
)


class AptosResized(ResizedImagesBuilder, skip_registration=True):
    """All listed APTOS 2019 training images, resized to SxS."""

    name = "aptos2019_resized"
    TITLE = "APTOS 2019 fundus images"
    HOMEPAGE = "https://www.kaggle.com/competitions/aptos2019-blindness-detection"


def read_labels(path: str) -> label_csv.LabelTable:
    """Validated rows of train.csv in file order (the order the folds depend on)."""
    rows = label_csv.read_rows(path, ("id_code", "diagnosis"), HINT)
    label_csv.check_unique(rows, "id_code", path)
    labels = label_csv.labels_from_ints(rows, "diagnosis", len(CLASS_NAMES), path)
    return label_csv.LabelTable(
        image_ids=tuple(r["id_code"] for r in rows),
        labels=np.asarray(labels, np.int32),
        origin=path,
        lines=tuple(r["_line"] for r in rows),
    )


def image_files(image_root: str, table: label_csv.LabelTable) -> list:
    """(id_code, path) of every listed image; a listed image without a PNG is an error naming its row."""
    directory = os.path.join(image_root, IMAGE_DIR)
    if not os.path.isdir(directory):
        raise label_csv.MissingImageError(f"APTOS image folder not found: {directory}. {HINT}")
    present = set(os.listdir(directory))
    items, missing = [], []
    for image_id, line in zip(table.image_ids, table.lines):
        path = os.path.join(directory, f"{image_id}.png")
        if f"{image_id}.png" in present:
            items.append((image_id, path))
        else:
            missing.append((line, image_id, path))
    if missing:
        raise label_csv.missing_files_error(missing, len(table), table.origin, directory)
    return items


def make_splits(
    table: label_csv.LabelTable, fold: int, seed: int = REFERENCE_SEED, val_fraction: float = DEFAULT_VAL_FRACTION
) -> Dict[str, np.ndarray]:
    """Row indices (ascending = CSV order, like the reference's `df.iloc[idx]`) of 'train', 'test' [+ 'val']."""
    return cv_splits.kfold_splits(table.labels, fold, seed, val_fraction, "APTOS", NUM_FOLDS)
