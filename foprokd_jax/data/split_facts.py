"""Facts of the official ISIC-2019-LT split CSVs, and the check of a downloaded split folder against them.

The 45 split files `{train,val,test}_skin{1..5}_{0.01,0.005,0.002}.csv` are the authors' files (FoPro-KD,
Elbatel et al., IEEE TMI 43(3) 2024, https://github.com/xmed-lab/FoPro-KD, folder `data/ham2019/`; the same
splits as Fed-MAS, Elbatel et al., MICCAI 2023 Workshops, arXiv:2307.14959, https://github.com/xmed-lab/Fed-MAS)
and are not redistributed here. What this package ships instead is `isic2019_lt_split_facts.json`: for every file its
number of rows, its per-class counts of the `finding` label, and two sha256 digests,

* `ids_sha256`: of its image ids, sorted, each followed by a newline (UTF-8);
* `labelled_ids_sha256`: of its `id,finding` pairs, sorted by id, each followed by a newline,

so that a user's download can be checked file by file (`foprokd-verify-splits --split_dir=...`) without the
files being in the repository. The digests do not depend on the row order (the loader shuffles anyway), and
`labelled_ids_sha256` also catches labels swapped between images, which leave the counts unchanged.
docs/datasets.md describes the check; docs/reference_semantics.md §8.1 the splits themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from importlib import resources
from typing import Dict, List, Optional

from foprokd_jax.data import isic_splits

FACTS_FILE = "isic2019_lt_split_facts.json"
FACTS_FORMAT = 1


def split_file_names() -> List[str]:
    """The 45 official file names, in a fixed order (split, fold, imbalance factor)."""
    return [
        os.path.basename(isic_splits.split_csv_path("", split, fold, imb))
        for split, fold, imb in itertools.product(isic_splits.SPLITS, isic_splits.FOLDS, isic_splits.IMBALANCE_FACTORS)
    ]


def _digest(lines) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def table_facts(table: isic_splits.SplitTable) -> dict:
    """The facts of one read split file: rows, per-class counts, and the two digests."""
    pairs = sorted(zip(table.image_ids, table.labels.tolist()))
    return {
        "rows": len(table),
        "class_counts": isic_splits.class_counts(table.labels).tolist(),
        "ids_sha256": _digest(image for image, _ in pairs),
        "labelled_ids_sha256": _digest(f"{image},{label}" for image, label in pairs),
    }


def _parse_name(name: str):
    """'train_skin3_0.005.csv' -> ('train', 3, '0.005')."""
    split, rest = name[: -len(".csv")].split("_skin")
    fold, imb = rest.split("_", 1)
    return split, int(fold), imb


def folder_facts(split_dir: str) -> Dict[str, dict]:
    """Facts of all 45 files of `split_dir`; raises SplitFileError naming the first missing or bad file."""
    return {name: table_facts(isic_splits.read_split(split_dir, *_parse_name(name))) for name in split_file_names()}


def facts_document(files: Dict[str, dict]) -> dict:
    """The JSON document shipped with the package: the per-file facts plus what they mean and cite."""
    return {
        "format": FACTS_FORMAT,
        "what": "Facts of the official ISIC-2019-LT split CSVs {split}_skin{fold}_{imb}.csv (columns "
        "image,finding_name,finding; label = finding). The CSVs themselves are not redistributed.",
        "source": "https://github.com/xmed-lab/FoPro-KD, folder data/ham2019/",
        "cite": [
            'M. Elbatel, R. Marti, X. Li, "FoPro-KD: Fourier Prompted Effective Knowledge Distillation '
            'for Long-Tailed Medical Image Recognition", IEEE TMI 43(3):954-965, 2024',
            'M. Elbatel, H. Wang, R. Marti, H. Fu, X. Li, "Federated Model Aggregation via '
            'Self-Supervised Priors for Highly Imbalanced Medical Image Classification", '
            "MICCAI 2023 Workshops, LNCS 14393, arXiv:2307.14959",
        ],
        "class_names": list(isic_splits.CLASS_NAMES),
        "ids_sha256": "sha256 of the sorted image ids, each followed by a newline (UTF-8)",
        "labelled_ids_sha256": 'sha256 of the "image,finding" lines sorted by image, each followed by a newline',
        "files": {name: files[name] for name in split_file_names()},
    }


def load_facts(path: Optional[str] = None) -> Dict[str, dict]:
    """The per-file facts: of the packaged table by default, or of a facts JSON at `path`."""
    if path is None:
        text = resources.files("foprokd_jax.data").joinpath(FACTS_FILE).read_text()
    else:
        with open(path) as f:
            text = f.read()
    document = json.loads(text)
    if document.get("format") != FACTS_FORMAT or not isinstance(document.get("files"), dict):
        raise ValueError(f"{path or FACTS_FILE}: not a split-facts file of format {FACTS_FORMAT}")
    return document["files"]


def write_facts(path: str, files: Dict[str, dict]) -> None:
    """Writes the facts JSON atomically (a temporary file renamed into place: nothing half-written)."""
    text = json.dumps(facts_document(files), indent=1)
    # One line per count list keeps the 45 entries readable in a diff.
    text = re.sub(r"\[([\d,\s]+)\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Difference:
    """One file of a split folder that is not the official one."""

    name: str
    kind: str  # 'missing', 'unreadable', 'counts', 'ids' or 'labels'
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.kind}: {self.detail}"


def compare_folder(split_dir: str, expected: Optional[Dict[str, dict]] = None) -> List[Difference]:
    """Every file of `split_dir` that differs from `expected` (default: the packaged official facts).

    One Difference per differing file, in `split_file_names()` order; an empty list means the folder holds
    exactly the official splits. The checks go from coarse to fine and the first failing one is reported:
    missing file, unreadable file (not the official format), other rows or per-class counts, other image
    ids, same ids with other labels. Extra files in the folder are ignored.
    """
    expected = load_facts() if expected is None else expected
    differences = []
    for name in split_file_names():
        want = expected[name]
        path = os.path.join(split_dir, name)
        if not os.path.isfile(path):
            differences.append(Difference(name, "missing", f"no file {path}"))
            continue
        try:
            got = table_facts(isic_splits.read_split(split_dir, *_parse_name(name)))
        except isic_splits.SplitFileError as e:
            differences.append(Difference(name, "unreadable", str(e)))
            continue
        if got["class_counts"] != want["class_counts"]:
            differences.append(
                Difference(
                    name,
                    "counts",
                    f"per-class counts {got['class_counts']} (rows {got['rows']}), official "
                    f"{want['class_counts']} (rows {want['rows']})",
                )
            )
        elif got["ids_sha256"] != want["ids_sha256"]:
            differences.append(Difference(name, "ids", "same per-class counts but other image ids"))
        elif got["labelled_ids_sha256"] != want["labelled_ids_sha256"]:
            differences.append(Difference(name, "labels", "same image ids and counts but other labels"))
    return differences
