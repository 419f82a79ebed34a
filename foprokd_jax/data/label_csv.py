"""Reading the label CSVs of the benchmarks with errors that name the file, the row and the value."""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Dict, List, Sequence

import numpy as np

from foprokd_jax.data.image_folder_tfds import MissingImageError


class LabelFileError(ValueError):
    """A label/metadata CSV that is missing a column, has an unknown label, a duplicate id, or no rows."""


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """A benchmark's labelled images in file order (the order the splits are computed in)."""

    image_ids: tuple
    labels: np.ndarray  # int32 (n,)
    origin: str  # the CSV or folder the rows come from, for messages and results.json
    lines: tuple = ()  # CSV line of each row, for messages
    groups: tuple = ()  # e.g. the HAM10000 lesion id of each row
    files: tuple = ()  # image path of each row, when the listing gives it (Hyper-Kvasir)

    def __len__(self) -> int:
        return len(self.image_ids)


def read_rows(path: str, required_columns: Sequence[str], hint: str = "") -> List[Dict[str, str]]:
    """The CSV's rows as dicts of stripped strings; each row also gets '_line' (its line in the file)."""
    if not os.path.isfile(path):
        raise MissingImageError(f"Label file not found: {path}. {hint}".strip())
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required_columns if c not in columns]
        if missing:
            raise LabelFileError(
                f"{path}: no {missing[0]!r} column (columns: {columns}); expected at least "
                f"{list(required_columns)}. {hint}".strip()
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            clean = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            clean["_line"] = line
            rows.append(clean)
    if not rows:
        raise LabelFileError(f"{path}: the file has a header but no rows.")
    return rows


def labels_from_names(rows: Sequence[dict], column: str, names: Sequence[str], path: str) -> List[int]:
    """Index of each row's `column` value in `names`; an unknown value names its line."""
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for row in rows:
        value = row[column]
        if value not in index:
            raise LabelFileError(
                f"{path} line {row['_line']}: unknown {column} {value!r}; expected one of {list(names)}."
            )
        labels.append(index[value])
    return labels


def labels_from_ints(rows: Sequence[dict], column: str, num_classes: int, path: str) -> List[int]:
    """Integer labels in [0, num_classes); a non-integer or out-of-range value names its line."""
    labels = []
    for row in rows:
        value = row[column]
        if not (value.isascii() and value.isdigit() and int(value) < num_classes):
            raise LabelFileError(
                f"{path} line {row['_line']}: {column} {value!r} is not an integer in [0, {num_classes})."
            )
        labels.append(int(value))
    return labels


def check_unique(rows: Sequence[dict], column: str, path: str) -> None:
    """Each id once: a repeated id would put one image in two places (or two splits)."""
    first_line = {}
    for row in rows:
        value = row[column]
        if not value:
            raise LabelFileError(f"{path} line {row['_line']}: empty {column}.")
        if value in first_line:
            raise LabelFileError(
                f"{path} line {row['_line']}: {column} {value!r} is listed again (first on line {first_line[value]})."
            )
        first_line[value] = row["_line"]


def missing_files_error(missing: Sequence[tuple], total: int, path: str, where: str) -> MissingImageError:
    """Error for listed images without a file; `missing` holds (line, image id, expected path) triples."""
    line, image_id, expected = missing[0]
    return MissingImageError(
        f"{len(missing)} of {total} images listed in {path} have no file in {where}; first: line {line}, "
        f"{image_id!r} (expected {expected}). Others: {[m[1] for m in missing[1:6]]}. Unpack the complete "
        "download, or remove those rows."
    )
