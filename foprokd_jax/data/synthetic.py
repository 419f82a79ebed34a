"""A small synthetic ISIC-2019-LT dataset in exactly the official on-disk layout.

    <out>/ISIC_2019_Training_Input/<image id>.jpg
    <out>/splits/{train,val,test}_skin{fold}_{imb}.csv   (columns image,finding_name,finding)

so that the real loader, the TFDS preparation and the training launchers can be exercised end to
end without the 9 GB ISIC download. Each class has its own lesion colour, lesion shape and stripe
frequency, so a small CNN can learn it. The splits follow docs/reference_semantics.md §8.1's recipe scaled down:
hold out `val_per_class` + `test_per_class` images per class, then take
`n_i = min(floor(n_max * imb**(i/7)), available_i)` training images for class i = 0..7
(frequency order), with class pools that shrink like ISIC-2019's so the availability cap can bind.
Folds and imbalance factors are independent random draws, as in the released CSVs.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image

from foprokd_jax.data.isic_splits import CLASS_NAMES, NUM_CLASSES

# finding (frequency rank) -> finding_name (ISIC-2019 ground-truth column), docs/reference_semantics.md §8.1:
# NV->1, MEL->0, BCC->2, BKL->4, AK->3, SCC->7, VASC->6, DF->5.
FINDING_NAME = (1, 0, 2, 4, 3, 7, 6, 5)
# ISIC-2019 images per class in frequency order; used to shape the synthetic class pools.
ISIC_TOTALS = (12875, 4522, 3323, 2624, 867, 628, 253, 239)
# The real data mixes 600x450 dermoscopy crops with 1024x1024 images.
DEFAULT_IMAGE_SIZES = ((600, 450), (1024, 1024))


def class_pool_sizes(n_max: int, val_per_class: int, test_per_class: int) -> list:
    """Images per class: ISIC's natural distribution scaled so the head class has n_max for train."""
    held_out = val_per_class + test_per_class
    return [held_out + max(1, math.ceil(n_max * total / ISIC_TOTALS[0])) for total in ISIC_TOTALS]


def train_counts(n_max: int, imb: float, available: Sequence[int]) -> list:
    """docs/reference_semantics.md §8.1 step 2, scaled: n_i = min(floor(n_max * imb^(i/7)), available_i), at least 1.

    The floor of 1 keeps every class present when n_max is small (the real recipe never hits 0).
    """
    last = NUM_CLASSES - 1
    return [max(1, min(int(math.floor(n_max * imb ** (i / last))), available[i])) for i in range(NUM_CLASSES)]


def _draw_lesion(label: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Skin-coloured background plus a class-coloured textured ellipse; mild random jitter."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    skin = np.array([224, 180, 150], np.float32) + rng.normal(0, 8, 3)
    hue = label / NUM_CLASSES
    lesion = 127.5 + 110 * np.array([math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)])
    cx = width * (0.5 + rng.uniform(-0.08, 0.08))
    cy = height * (0.5 + rng.uniform(-0.08, 0.08))
    # Class sets the aspect ratio and the stripe frequency of the lesion texture.
    rx = min(width, height) * rng.uniform(0.25, 0.35)
    ry = rx * (0.55 + 0.06 * label)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    period = min(width, height) / (3 + 2 * label)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (xx + yy) / period)
    img = np.broadcast_to(skin, (height, width, 3)).copy()
    img[inside] = lesion * (0.7 + 0.3 * stripes[inside, None])
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _write_csv(path: str, rows: Sequence[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "finding_name", "finding"])
        for image_id, label in rows:
            writer.writerow([image_id, FINDING_NAME[label], label])


def write_synthetic_isic(
    out_dir: str,
    n_max: int = 64,
    val_per_class: int = 4,
    test_per_class: int = 8,
    image_sizes: Sequence[tuple] = DEFAULT_IMAGE_SIZES,
    folds: Sequence[int] = (1, 2, 3, 4, 5),
    imbs: Sequence = ("0.01", "0.005", "0.002"),
    seed: int = 0,
    downsampled_every: int = 5,
    jpeg_quality: int = 90,
) -> dict:
    """Writes the images and split CSVs under `out_dir`; deterministic given `seed`.

    Returns a summary: paths, number of images, and the per-class train counts per imbalance.
    """
    rng = np.random.default_rng(seed)
    pools = class_pool_sizes(n_max, val_per_class, test_per_class)
    labels = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(pools)])
    # Ids are assigned in a random class order so that sorted ids do not group the classes.
    labels = labels[rng.permutation(len(labels))]
    image_ids = [
        f"ISIC_{k:07d}" + ("_downsampled" if downsampled_every and k % downsampled_every == 1 else "")
        for k in range(len(labels))
    ]

    image_dir = os.path.join(out_dir, "ISIC_2019_Training_Input")
    split_dir = os.path.join(out_dir, "splits")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(split_dir, exist_ok=True)
    for k, (image_id, label) in enumerate(zip(image_ids, labels)):
        width, height = image_sizes[k % len(image_sizes)]
        image_rng = np.random.default_rng([seed, k])
        _draw_lesion(int(label), width, height, image_rng).save(
            os.path.join(image_dir, f"{image_id}.jpg"), quality=jpeg_quality
        )

    by_class = [[image_ids[k] for k in np.flatnonzero(labels == c)] for c in range(NUM_CLASSES)]
    counts = {}
    for imb_index, imb in enumerate(imbs):
        imb = imb if isinstance(imb, str) else f"{imb:g}"  # 0.005 -> '0.005', as in file names.
        available = [pools[c] - val_per_class - test_per_class for c in range(NUM_CLASSES)]
        counts[str(imb)] = train_counts(n_max, float(imb), available)
        for fold in folds:
            # Independent draw per (fold, imb), like the released CSVs (docs/reference_semantics.md §8.1).
            split_rng = np.random.default_rng([seed, int(fold), imb_index, 1])
            rows = {"train": [], "val": [], "test": []}
            for c in range(NUM_CLASSES):
                ids = [by_class[c][i] for i in split_rng.permutation(len(by_class[c]))]
                rows["val"] += [(i, c) for i in ids[:val_per_class]]
                rows["test"] += [(i, c) for i in ids[val_per_class : val_per_class + test_per_class]]
                start = val_per_class + test_per_class
                rows["train"] += [(i, c) for i in ids[start : start + counts[str(imb)][c]]]
            for split, split_rows in rows.items():
                split_rows = [split_rows[i] for i in split_rng.permutation(len(split_rows))]
                _write_csv(os.path.join(split_dir, f"{split}_skin{fold}_{imb}.csv"), split_rows)

    return {
        "image_dir": image_dir,
        "split_dir": split_dir,
        "num_images": len(image_ids),
        "class_names": CLASS_NAMES,
        "class_pool_sizes": pools,
        "train_counts": counts,
        "val_per_class": val_per_class,
        "test_per_class": test_per_class,
    }
