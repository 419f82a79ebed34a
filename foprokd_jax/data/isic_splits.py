"""The official ISIC-2019 long-tailed split CSVs (FoPro-KD `data/ham2019/`).

Each file `{split}_skin{fold}_{imb}.csv` has the columns `image,finding_name,finding`.
The label is `finding`, the class index ranked by ISIC-2019 frequency (docs/reference_semantics.md §8.1, §13.3);
`finding_name` is the original ISIC ground-truth column index and is not used for training.
Image ids are kept verbatim, including any `_downsampled` suffix, because the JPEG on disk is
named `<image>.jpg` exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Union

import numpy as np

# Index = `finding` (frequency order in ISIC-2019: NV is the head class, DF the rarest).
CLASS_NAMES = ("NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF")
NUM_CLASSES = len(CLASS_NAMES)

SPLITS = ("train", "val", "test")
FOLDS = (1, 2, 3, 4, 5)
# Spelled exactly as in the released file names.
IMBALANCE_FACTORS = ("0.01", "0.005", "0.002")

SPLITS_SOURCE_HINT = (
    "Download the split CSVs from https://github.com/xmed-lab/FoPro-KD (folder data/ham2019/) "
    "and pass the folder that holds them."
)


class SplitFileError(ValueError):
    """A split CSV is missing or does not look like an official FoPro-KD split file."""


def format_imbalance(imb: Union[float, str]) -> str:
    """Returns `imb` spelled as in the file names ('0.01', '0.005', '0.002').

    Accepts the float or any string that parses to one of the three released factors, so that
    `0.01`, `'0.01'` and `1e-2` all name the same file.
    """
    try:
        value = float(imb)
    except (TypeError, ValueError):
        raise SplitFileError(f"Bad imbalance factor {imb!r}; expected one of {IMBALANCE_FACTORS}.") from None
    for name in IMBALANCE_FACTORS:
        if abs(value - float(name)) < 1e-12:
            return name
    raise SplitFileError(f"Bad imbalance factor {imb!r}; expected one of {IMBALANCE_FACTORS}.")


def _check_split_and_fold(split: str, fold: int) -> int:
    if split not in SPLITS:
        raise SplitFileError(f"Bad split {split!r}; expected one of {SPLITS}.")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer, str)):
        raise SplitFileError(f"Bad fold {fold!r}; expected one of {FOLDS}.")
    try:
        fold_int = int(fold)
    except ValueError:
        raise SplitFileError(f"Bad fold {fold!r}; expected one of {FOLDS}.") from None
    if fold_int not in FOLDS:
        raise SplitFileError(f"Bad fold {fold!r}; expected one of {FOLDS}.")
    return fold_int


def split_csv_path(split_dir: str, split: str, fold: int, imb: Union[float, str]) -> str:
    """Path of the official CSV, e.g. `<split_dir>/train_skin1_0.002.csv`."""
    fold_int = _check_split_and_fold(split, fold)
    return os.path.join(split_dir, f"{split}_skin{fold_int}_{format_imbalance(imb)}.csv")


@dataclasses.dataclass(frozen=True)
class SplitTable:
    """One split file: image ids (verbatim) and their `finding` labels, row order kept."""

    image_ids: tuple
    labels: np.ndarray  # int32, shape (n,)
    path: str

    def __len__(self) -> int:
        return len(self.image_ids)


def read_split(
    split_dir: str, split: str, fold: int, imb: Union[float, str], num_classes: int = NUM_CLASSES
) -> SplitTable:
    """Reads and validates one official split CSV."""
    path = split_csv_path(split_dir, split, fold, imb)
    if not os.path.isfile(path):
        raise SplitFileError(f"Split file not found: {path}. {SPLITS_SOURCE_HINT}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        columns = next(reader, [])
        for needed in ("image", "finding"):
            if needed not in columns:
                raise SplitFileError(
                    f"{path}: no {needed!r} column (columns: {columns}); expected the official "
                    f"header image,finding_name,finding. {SPLITS_SOURCE_HINT}"
                )
        # Plain rows with column indices: several times faster than DictReader on the 23k-row train files.
        image_col, finding_col = columns.index("image"), columns.index("finding")
        try:
            rows = [(row[image_col].strip(), row[finding_col].strip()) for row in reader if row]
        except IndexError:
            raise SplitFileError(f"{path}: a row has fewer fields than the header {columns}.") from None
    if not rows:
        raise SplitFileError(f"{path}: the file has a header but no rows.")

    image_ids = tuple(image for image, _ in rows)
    try:
        labels = np.asarray([int(finding) for _, finding in rows], dtype=np.int32)
    except ValueError as e:
        raise SplitFileError(f"{path}: non-integer value in the finding column ({e}).") from None
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        first = int(bad[0])
        raise SplitFileError(
            f"{path}: {bad.size} label(s) outside [0, {num_classes}); first at data row {first + 1} "
            f"(image {image_ids[first]!r}, finding {int(labels[first])})."
        )
    if len(set(image_ids)) != len(image_ids):
        seen, duplicates = set(), []
        for image in image_ids:
            if image in seen and image not in duplicates:
                duplicates.append(image)
            seen.add(image)
        raise SplitFileError(f"{path}: {len(duplicates)} duplicated image id(s), e.g. {duplicates[:5]}.")
    return SplitTable(image_ids=image_ids, labels=labels, path=path)


def class_counts(labels, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Number of examples per class (int64, length `num_classes`), for BSM / logit adjustment."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{labels.min()}, {labels.max()}].")
    return np.bincount(labels.astype(np.int64), minlength=num_classes)
