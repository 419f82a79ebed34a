"""HAM10000 (Tschandl et al., Sci. Data 2018): metadata, image files and lesion-aware splits.

Download layout (`image_root`): `HAM10000_metadata.csv` (columns lesion_id, image_id, dx, dx_type, age,
sex, localization[, dataset]) and the images `<image_id>.jpg` in `HAM10000_images_part_1/` and
`HAM10000_images_part_2/`.

Classes (docs/crckd.md §R8): the 7 diagnoses in the ISIC-2018 Task-3 column order that SRC-MT's loader (which
CRCKD is forked from) uses: 0 MEL, 1 NV, 2 BCC, 3 AKIEC, 4 BKL, 5 DF, 6 VASC (dx codes mel, nv, bcc,
akiec, bkl, df, vasc).

Splits: CRCKD's split is unknown (docs/crckd.md §R8: probably an image-level 70/10/20 split, 7012 train images).
Here fold k in 1..5 is the k-th test fold of a seeded, stratified 5-fold partition, so the 5 test sets
are disjoint and cover the data (20 % each); `val_fraction` of ALL images (default 0.1) is then carved
from the other four folds, leaving 70 % for training: 70/10/20.
- split_mode 'lesion' (default): all images of one lesion_id land in the same split
  (`cv_splits.stratified_group_kfold_test_folds`, then a lesion-grouped validation carve). HAM10000 has
  several images of many lesions, so an image-level split puts near-duplicates of test images into
  training.
- split_mode 'image': image-level, what the paper most likely did; LEAKY (same lesion in train and test),
  only for comparing with published numbers. The test folds are then exactly scikit-learn's
  `StratifiedKFold(5, shuffle=True, random_state=split_seed)` over the metadata rows.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from foprokd_jax.data import cv_splits, label_csv
from foprokd_jax.data.image_folder_tfds import ResizedImagesBuilder

METADATA_CSV = "HAM10000_metadata.csv"
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
DX_CODES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
CLASS_NAMES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
SPLIT_MODES = ("lesion", "image")
NUM_FOLDS = 5
DEFAULT_VAL_FRACTION = 0.1
HINT = (
    "Download HAM10000 (https://doi.org/10.7910/DVN/DBW86T) and unpack HAM10000_metadata.csv and the "
    "two image folders into input.image_root."
)


class Ham10000Resized(ResizedImagesBuilder, skip_registration=True):
    """All listed HAM10000 images, resized to SxS."""

    name = "ham10000_resized"
    TITLE = "HAM10000 images"
    HOMEPAGE = "https://doi.org/10.7910/DVN/DBW86T"


def read_metadata(path: str) -> label_csv.LabelTable:
    """Validated metadata rows in file order: image ids, lesion ids (groups), class indices."""
    rows = label_csv.read_rows(path, ("lesion_id", "image_id", "dx"), HINT)
    label_csv.check_unique(rows, "image_id", path)
    labels = label_csv.labels_from_names(rows, "dx", DX_CODES, path)
    first_row_of_lesion = {}
    for row in rows:
        if not row["lesion_id"]:
            raise label_csv.LabelFileError(f"{path} line {row['_line']}: empty lesion_id.")
        first = first_row_of_lesion.setdefault(row["lesion_id"], row)
        if first["dx"] != row["dx"]:  # the lesion-grouped split needs one label per lesion
            raise label_csv.LabelFileError(
                f"{path} line {row['_line']}: lesion {row['lesion_id']!r} has dx {row['dx']!r} here but "
                f"{first['dx']!r} on line {first['_line']}."
            )
    return label_csv.LabelTable(
        image_ids=tuple(r["image_id"] for r in rows),
        labels=np.asarray(labels, np.int32),
        origin=path,
        lines=tuple(r["_line"] for r in rows),
        groups=tuple(r["lesion_id"] for r in rows),
    )


def image_files(image_root: str, table: label_csv.LabelTable) -> list:
    """(image id, path) of every listed image; a listed image without a file is an error naming its row."""
    listing = {}
    for folder in reversed(IMAGE_DIRS):  # part_1 wins if an image were in both
        directory = os.path.join(image_root, folder)
        if os.path.isdir(directory):
            listing.update({name: os.path.join(directory, name) for name in os.listdir(directory)})
    if not listing:
        raise label_csv.MissingImageError(
            f"No HAM10000 image folders in {image_root}: expected {' and '.join(IMAGE_DIRS)}. {HINT}"
        )
    items, missing = [], []
    for image_id, line in zip(table.image_ids, table.lines):
        path = listing.get(f"{image_id}.jpg")
        if path is None:
            missing.append((line, image_id, os.path.join(image_root, IMAGE_DIRS[0], f"{image_id}.jpg")))
        else:
            items.append((image_id, path))
    if missing:
        raise label_csv.missing_files_error(missing, len(table), table.origin, " or ".join(IMAGE_DIRS))
    return items


def make_splits(
    table: label_csv.LabelTable,
    fold: int,
    seed: int,
    split_mode: str = "lesion",
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> Dict[str, np.ndarray]:
    """Row indices (ascending, i.e. metadata order) of 'train', 'val' (if val_fraction > 0) and 'test'."""
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"input.split_mode={split_mode!r} is not one of {SPLIT_MODES}")
    groups = table.groups if split_mode == "lesion" else None
    return cv_splits.kfold_splits(table.labels, fold, seed, val_fraction, "HAM10000", NUM_FOLDS, groups)
