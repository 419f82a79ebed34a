"""ISIC-2019 JPEGs resized once into a tfds array_record dataset (no TensorFlow needed).

The preparation itself is the generic `image_folder_tfds` path (resize to the model's size, raw uint8
records in sorted-id order, parts <= 512 MiB, atomic, locked, bad-image report); this module only says
where the ISIC-2019 JPEGs are and joins the official split CSVs to the prepared images.

Layout on disk: `<data_dir>/isic_resized/size<S>/1.0.0/`.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

import numpy as np
import tqdm

from foprokd_jax.data import image_folder_tfds
from foprokd_jax.data.image_folder_tfds import (  # noqa: F401  (re-exported for existing callers)
    PART_PREFIX,
    STANDARD_SIZES,
    ImageStore,
    _as_str,
    chunk_items,
    load_resized,
)
from foprokd_jax.data.isic_splits import SplitTable

IMAGE_DIR_NAME = "ISIC_2019_Training_Input"
DATASET_NAME = "isic_resized"
# The store of the ISIC images and the part chunking are the generic ones.
IsicImageStore = ImageStore
chunk_paths = chunk_items


class IsicImageError(image_folder_tfds.ImageFileError):
    """An ISIC image folder or JPEG that cannot be used."""


def find_image_dir(manual_dir: str) -> str:
    """The folder holding the JPEGs: `<manual_dir>/ISIC_2019_Training_Input` or `manual_dir` itself."""
    nested = os.path.join(manual_dir, IMAGE_DIR_NAME)
    if os.path.isdir(nested):
        return nested
    if os.path.basename(os.path.normpath(manual_dir)) == IMAGE_DIR_NAME and os.path.isdir(manual_dir):
        return manual_dir
    raise IsicImageError(
        f"ISIC-2019 image folder not found: expected {nested} (the unzipped official "
        f"ISIC_2019_Training_Input.zip), or pass that folder itself."
    )


def list_jpegs(image_dir: str) -> list:
    """Sorted JPEG paths in `image_dir` (the official zip also holds LICENSE and a metadata CSV)."""
    paths = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    if not paths:
        raise IsicImageError(f"No *.jpg files in {image_dir}.")
    return paths


def image_id_of(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class IsicResized(image_folder_tfds.ResizedImagesBuilder, skip_registration=True):
    """All 25,331 ISIC-2019 training JPEGs, resized to SxS, in sorted-id order over `part*` splits."""

    name = DATASET_NAME
    TITLE = "ISIC-2019 training JPEGs"
    HOMEPAGE = "https://challenge.isic-archive.com/data/#2019"


def make_builder(data_dir: str, manual_dir: Optional[str] = None, image_size: int = 224) -> IsicResized:
    """The builder for any image size (`size224`, `size112`, ... or e.g. `size48`)."""
    del manual_dir  # Only needed to prepare (prepare_isic lists it); kept for a uniform call signature.
    return image_folder_tfds.make_builder(IsicResized, data_dir, image_size)


def _warn_if_listing_differs(store: ImageStore, manual_dir: Optional[str]) -> None:
    if manual_dir is None:
        return
    try:
        ids = [image_id_of(p) for p in list_jpegs(find_image_dir(manual_dir))]
    except IsicImageError:
        return  # The JPEGs may legitimately be absent once the resized copy exists.
    if tuple(ids) != store.image_ids and set(ids) != set(store.image_ids) | store.bad_ids:
        tqdm.tqdm.write(
            f"WARNING: {store.dataset_dir} holds {len(store)} images but "
            f"{manual_dir} now has {len(ids)} JPEGs with other ids; delete the "
            "prepared folder to rebuild it."
        )


def prepare_isic(
    manual_dir: Optional[str], data_dir: str, image_size: int = 224, bad_image_policy: str = "fail"
) -> ImageStore:
    """Prepares the resized dataset once (reused afterwards) and opens it.

    `manual_dir` is the folder that contains `ISIC_2019_Training_Input` (or that folder itself);
    it may be None when the data is already prepared.
    """

    def items():
        return [(image_id_of(p), p) for p in list_jpegs(find_image_dir(manual_dir))]

    if manual_dir is None and not image_folder_tfds.is_prepared(IsicResized, data_dir, image_size):
        raise IsicImageError(
            f"{make_builder(data_dir, None, image_size).data_path} is not prepared and no manual_dir was given."
        )
    store = image_folder_tfds.prepare_images(
        IsicResized, None if manual_dir is None else items, data_dir, image_size, bad_image_policy
    )
    _warn_if_listing_differs(store, manual_dir)
    return store


class IsicSplitSource(image_folder_tfds.StoreSource):
    """One split CSV joined to the prepared images: grain-compatible random access.

    `source[i]` -> {'image': uint8 (S, S, 3), 'label': int32 scalar}, in the CSV's row order.
    """

    def __init__(self, table: SplitTable, store: ImageStore):
        missing = [image_id for image_id in table.image_ids if image_id not in store]
        if missing:
            raise IsicImageError(
                f"{len(missing)} of {len(table)} images listed in {table.path} are missing from "
                f"the prepared images in {store.dataset_dir}, e.g. {missing[:5]}. Check that "
                "manual_dir holds the full ISIC_2019_Training_Input folder."
            )
        super().__init__(table.image_ids, np.asarray(table.labels, np.int32), store, table.path)
        self.table = table

    def __repr__(self) -> str:
        return f"IsicSplitSource({os.path.basename(self.table.path)}, n={len(self)}, size={self.store.image_size})"
