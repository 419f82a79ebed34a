"""Hyper-Kvasir labelled images (Borgli et al., Sci. Data 2020): the class tree and seeded 5-fold splits.

Download layout (`image_root`, docs/reference_semantics.md §8.3): the unzipped `labeled-images` folder (or its
parent), `labeled-images/{lower-gi-tract,upper-gi-tract}/<category>/<class>/<uuid>.jpg`; 10,662 images of
23 classes. The class of an image is the name of the folder that holds it, so a flattened
`labeled-images/<class>/*.jpg` copy works too.

Classes: the 23 finding names in sorted order (the index Balanced-MixUp gives them via `np.unique` of the
official `image-labels.csv` "Finding" column).

Splits (no official split covers all classes; FoPro-KD follows Balanced-MixUp's stratified 5-fold CV,
docs/reference_semantics.md §8.3): fold k in 1..5 is the k-th test fold of `StratifiedKFold(5, shuffle=True,
random_state=split_seed)` (numpy reimplementation, `cv_splits`) over the images in sorted relative-path
order. Sources are 'train' and 'test'; `val_fraction` > 0 carves a seeded stratified 'val' (that fraction
of ALL images) out of the training fold. Head/medium/tail (docs/reference_semantics.md §8.3): > 700 / < 70 images in the
training fold (`class_groups`); the smallest classes (ileum 9, hemorrhoids 6 images) still appear in
every test fold.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from foprokd_jax.data import cv_splits, label_csv
from foprokd_jax.data.image_folder_tfds import MissingImageError, ResizedImagesBuilder

TREE_NAME = "labeled-images"
# Official tree: class -> (tract, category), and the number of images per class in the release.
CLASS_TREE = {
    "barretts": ("upper-gi-tract", "pathological-findings", 41),
    "barretts-short-segment": ("upper-gi-tract", "pathological-findings", 53),
    "bbps-0-1": ("lower-gi-tract", "quality-of-mucosal-views", 646),
    "bbps-2-3": ("lower-gi-tract", "quality-of-mucosal-views", 1148),
    "cecum": ("lower-gi-tract", "anatomical-landmarks", 1009),
    "dyed-lifted-polyps": ("lower-gi-tract", "therapeutic-interventions", 1002),
    "dyed-resection-margins": ("lower-gi-tract", "therapeutic-interventions", 989),
    "esophagitis-a": ("upper-gi-tract", "pathological-findings", 403),
    "esophagitis-b-d": ("upper-gi-tract", "pathological-findings", 260),
    "hemorrhoids": ("lower-gi-tract", "pathological-findings", 6),
    "ileum": ("lower-gi-tract", "anatomical-landmarks", 9),
    "impacted-stool": ("lower-gi-tract", "quality-of-mucosal-views", 131),
    "polyps": ("lower-gi-tract", "pathological-findings", 1028),
    "pylorus": ("upper-gi-tract", "anatomical-landmarks", 999),
    "retroflex-rectum": ("lower-gi-tract", "anatomical-landmarks", 391),
    "retroflex-stomach": ("upper-gi-tract", "anatomical-landmarks", 764),
    "ulcerative-colitis-grade-0-1": ("lower-gi-tract", "pathological-findings", 35),
    "ulcerative-colitis-grade-1": ("lower-gi-tract", "pathological-findings", 201),
    "ulcerative-colitis-grade-1-2": ("lower-gi-tract", "pathological-findings", 11),
    "ulcerative-colitis-grade-2": ("lower-gi-tract", "pathological-findings", 443),
    "ulcerative-colitis-grade-2-3": ("lower-gi-tract", "pathological-findings", 28),
    "ulcerative-colitis-grade-3": ("lower-gi-tract", "pathological-findings", 133),
    "z-line": ("upper-gi-tract", "anatomical-landmarks", 932),
}
CLASS_NAMES = tuple(sorted(CLASS_TREE))
NUM_FOLDS = 5
DEFAULT_VAL_FRACTION = 0.0
HEAD_MIN, TAIL_MAX = 700, 70
IMAGE_SUFFIXES = (".jpg", ".jpeg")
HINT = (
    "Download hyper-kvasir-labeled-images.zip (https://datasets.simula.no/hyper-kvasir/) and unzip it "
    "so that input.image_root/labeled-images/lower-gi-tract/... exists."
)


class HyperKvasirResized(ResizedImagesBuilder, skip_registration=True):
    """All 10,662 labelled Hyper-Kvasir images, resized to SxS."""

    name = "hyperkvasir_resized"
    TITLE = "Hyper-Kvasir labelled images"
    HOMEPAGE = "https://datasets.simula.no/hyper-kvasir/"


def find_tree(image_root: str) -> str:
    """`<image_root>/labeled-images`, or `image_root` itself when it is that folder."""
    nested = os.path.join(image_root, TREE_NAME)
    if os.path.isdir(nested):
        return nested
    if os.path.basename(os.path.normpath(image_root)) == TREE_NAME and os.path.isdir(image_root):
        return image_root
    raise MissingImageError(f"Hyper-Kvasir folder not found: expected {nested}. {HINT}")


def scan_tree(image_root: str) -> label_csv.LabelTable:
    """Every image under the tree, labelled by its folder, in sorted relative-path order."""
    tree = find_tree(image_root)
    found = []
    for directory, subdirs, files in os.walk(tree):
        subdirs.sort()
        images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            continue
        class_name = os.path.basename(directory)
        if class_name not in CLASS_TREE:
            raise label_csv.LabelFileError(
                f"{directory}: {len(images)} image(s) in a folder that is not a Hyper-Kvasir class "
                f"({class_name!r}); expected one of {list(CLASS_NAMES)}."
            )
        found += [(os.path.relpath(os.path.join(directory, f), tree), class_name) for f in images]
    found.sort()
    absent = sorted(set(CLASS_NAMES) - {c for _, c in found})
    if absent:
        raise label_csv.LabelFileError(
            f"{tree}: no images of the class(es) {absent}; the 23-class benchmark needs all of them. {HINT}"
        )
    image_ids = [os.path.splitext(os.path.basename(rel))[0] for rel, _ in found]
    first = {}
    for (rel, _), image_id in zip(found, image_ids):
        if image_id in first:
            raise label_csv.LabelFileError(
                f"{tree}: image id {image_id!r} appears twice ({first[image_id]} and "
                f"{rel}); ids (file names) must be unique across classes."
            )
        first[image_id] = rel
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    return label_csv.LabelTable(
        image_ids=tuple(image_ids),
        labels=np.asarray([index[c] for _, c in found], np.int32),
        origin=tree,
        files=tuple(os.path.join(tree, rel) for rel, _ in found),
    )


def image_files(table: label_csv.LabelTable) -> list:
    return list(zip(table.image_ids, table.files))


def make_splits(
    table: label_csv.LabelTable, fold: int, seed: int, val_fraction: float = DEFAULT_VAL_FRACTION
) -> Dict[str, np.ndarray]:
    """Row indices (sorted-path order) of 'train', 'test' [+ 'val'] for fold 1..5."""
    return cv_splits.kfold_splits(table.labels, fold, seed, val_fraction, "Hyper-Kvasir", NUM_FOLDS)


def class_groups(training_fold_counts, head_min: int = HEAD_MIN, tail_max: int = TAIL_MAX) -> dict:
    """Head (> head_min), medium and tail (< tail_max) classes by training-fold image count
    (docs/reference_semantics.md §8.3)."""
    groups = {"head": [], "medium": [], "tail": []}
    for name, count in zip(CLASS_NAMES, np.asarray(training_fold_counts).tolist()):
        groups["head" if count > head_min else "tail" if count < tail_max else "medium"].append(name)
    return groups
