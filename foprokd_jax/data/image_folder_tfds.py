"""A list of image files -> one resized tfds array_record dataset, read without TensorFlow.

Shared by every benchmark (ISIC-2019, HAM10000, APTOS 2019, Hyper-Kvasir): decoding a full-size
JPEG/PNG costs far more than a training step on a GPU, so each image is decoded once, resized to the
size the model sees (torchvision `Resize((S, S))`, no aspect kept, docs/reference_semantics.md §8.2) and stored as
raw uint8 (array_record compresses it with zstd). Reading back needs no decoding and no TensorFlow
(`as_data_source`).

Layout: `<data_dir>/<dataset name>/size<S>/1.0.0/`. Records are in sorted image-id order (keys
increase with it, `disable_shuffling=True`); the id list is in the dataset metadata, so id -> record is
a dict lookup.

Atomic preparation: TFDS writes into an `incomplete.*` folder and renames it only when everything is
written; any exception (a bad image under policy 'fail', Ctrl-C, a full disk) deletes that folder, and
a folder left by a killed process is never taken for a finished one. A file lock makes two processes
preparing the same dataset and size wait for each other instead of racing on the rename.

Bad images (corrupt or truncated files): every image that fails to decode is collected with its reason
into `<data_dir>/<dataset name>_size<S>.bad_images.json` (written atomically). Policy 'fail' (default)
then raises an error listing them and leaves no dataset; 'skip' writes the dataset without them and
records them in its metadata, so split builders can drop them with a warning.
"""

from __future__ import annotations

import collections
import concurrent.futures
import fcntl
import itertools
import json
import logging
import os
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from PIL import Image

from foprokd_jax.data import augment

# Without TensorFlow, TFDS cannot spill a split's records to disk (its shuffler buckets use tf.io.gfile),
# so a split must fit its ~1 GB in-memory buffer: the images go into consecutive parts `part000`,
# `part001`, ... of at most PART_BYTES, read back as one concatenated source ('all' is reserved).
PART_PREFIX = "part"
PART_BYTES = 512 << 20
STANDARD_SIZES = (224, 112, 64, 32)
BAD_IMAGE_POLICIES = ("fail", "skip")
# Decoding threads (PIL releases the GIL while decoding and resizing).
PREPARE_WORKERS = max(1, min(8, os.cpu_count() or 1))

ImageItems = Sequence[Tuple[str, str]]  # (image id, file path), ids unique


class ImageFileError(ValueError):
    """An image file, folder or prepared dataset that cannot be used."""


class MissingImageError(FileNotFoundError, ImageFileError):
    """An image that is listed (CSV row, split file) but not on disk or not in the prepared dataset."""


class BadImagesError(ImageFileError):
    """Images that could not be decoded, under bad_image_policy='fail'."""


def load_resized(path: str, size: int) -> np.ndarray:
    """Decodes one image and resizes it to (size, size, 3) uint8; names the file on failure."""
    try:
        with Image.open(path) as img:
            img.load()  # PIL decodes lazily: force it so that a truncated file fails here.
            return np.asarray(augment.resize_image(img, size), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageFileError(f"Could not read image {path}: {type(e).__name__}: {e}") from e


def _try_load(path: str, size: int):
    try:
        return load_resized(path, size), None
    except ImageFileError as e:
        return None, str(e.__cause__ or e)


def _decode_in_order(items: ImageItems, size: int, workers: int) -> Iterable:
    """Yields (image_id, path, image or None, reason or None) in `items` order, decoding ahead in threads."""
    if workers <= 1:
        for image_id, path in items:
            yield (image_id, path, *_try_load(path, size))
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        remaining = iter(items)
        for image_id, path in itertools.islice(remaining, 4 * workers):
            pending.append((image_id, path, pool.submit(_try_load, path, size)))
        while pending:
            image_id, path, future = pending.popleft()
            for next_id, next_path in itertools.islice(remaining, 1):
                pending.append((next_id, next_path, pool.submit(_try_load, next_path, size)))
            yield (image_id, path, *future.result())


def chunk_items(items: Sequence, image_size: int) -> List[list]:
    """Consecutive chunks of `items`, each under PART_BYTES of raw pixels (see PART_BYTES)."""
    per_part = max(1, PART_BYTES // (image_size * image_size * 3 + 64))
    return [list(items[i : i + per_part]) for i in range(0, len(items), per_part)]


def report_path(data_dir: str, dataset_name: str, image_size: int) -> str:
    """Where the list of undecodable images of a preparation is written (beside, not inside, the dataset)."""
    return os.path.join(data_dir, f"{dataset_name}_size{int(image_size)}.bad_images.json")


def _write_json_atomically(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _check_policy(policy: str) -> None:
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_image_policy={policy!r} is not one of {BAD_IMAGE_POLICIES}")


class ResizedImagesConfig(tfds.core.BuilderConfig):
    """One resolution of a resized dataset."""

    def __init__(self, *, image_size: int, **kwargs):
        super().__init__(
            name=f"size{image_size}", description=f"Images resized to {image_size}x{image_size}.", **kwargs
        )
        self.image_size = image_size


class ResizedImagesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base builder: subclasses set `name` (the folder under data_dir), TITLE and HOMEPAGE.

    Constructed with `items` (sorted (image id, path) pairs) only when the data is to be prepared.
    """

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [ResizedImagesConfig(image_size=s) for s in STANDARD_SIZES]
    TITLE = "images"
    HOMEPAGE = ""
    # Nothing is downloaded, so there is no checksums file to find next to the module; without this TFDS
    # looks for one through `importlib_resources`, which is not installed (and not needed).
    code_path = None

    def __init__(self, *, items: ImageItems = (), bad_image_policy: str = "fail", **kwargs):
        _check_policy(bad_image_policy)
        self._items = sorted(items)
        self._policy = bad_image_policy
        self._report_dir = os.fspath(kwargs.get("data_dir") or ".")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        # BYTES: the raw buffer. The default (NONE) would upcast every pixel to a varint int64.
        image_feature = tfds.features.Tensor(
            shape=(size, size, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
        )
        # DatasetInfo is built directly: `dataset_info_from_configs` would need package metadata.
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.TITLE}, resized once to {size}x{size} (foprokd_jax).",
            features=tfds.features.FeaturesDict({"image": image_feature, "image_id": tfds.features.Text()}),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The files are given, nothing is downloaded.
        if not self._items:
            raise ImageFileError(f"No images to prepare for {self.name}.")
        size = self.builder_config.image_size
        num_parts = len(chunk_items(self._items, size))
        part_names = [f"{PART_PREFIX}{k:03d}" for k in range(num_parts)]
        self.info.metadata["image_size"] = size
        self.info.metadata["parts"] = part_names
        self._written, self._bad, self._padding = [], [], 0
        # One bar over all parts (TFDS's own bars count per part and know no total).
        progress = tqdm.tqdm(
            total=len(self._items), unit="img", mininterval=2.0, desc=f"Resizing {self.TITLE} to {size}x{size}"
        )
        # All parts draw, in order, from one stream of the readable images: part k holds the next `quota`
        # of them and the last part the rest, so skipped images never leave a gap inside a part.
        stream = self._readable_images(progress)
        quota = -(-len(self._items) // num_parts)
        return {
            name: self._generate_examples(stream, None if k == num_parts - 1 else quota)
            for k, name in enumerate(part_names)
        }

    def _readable_images(self, progress):
        size = self.builder_config.image_size
        for image_id, path, image, reason in _decode_in_order(self._items, size, PREPARE_WORKERS):
            progress.update(1)
            if image is None:
                self._bad.append({"image_id": image_id, "path": path, "reason": reason})
            else:
                yield image_id, image
        progress.close()

    def _generate_examples(self, stream, quota: Optional[int]):
        # Keys increase with the sorted ids, so disable_shuffling keeps that order inside each part.
        count = 0
        for image_id, image in itertools.islice(stream, quota):
            self._written.append(image_id)
            yield count, {"image": image, "image_id": image_id}
            count += 1
        if quota is None:  # The last part: every image has been read.
            self._finish()
        if count == 0:
            # TFDS refuses an empty split; this only happens when skipped images emptied the trailing
            # part(s). A padding record (after all real ones, id '') keeps the layout valid.
            self._padding += 1
            self.info.metadata["padding_records"] = self._padding
            yield 0, {"image": np.zeros((self.builder_config.image_size,) * 2 + (3,), np.uint8), "image_id": ""}

    def _finish(self) -> None:
        """After the last image: report bad images; fail (nothing kept) or record them in the metadata."""
        size = self.builder_config.image_size
        path = report_path(self._report_dir, self.name, size)
        if not self._bad and os.path.exists(path):
            os.remove(path)  # A report left by an earlier failed preparation no longer applies.
        if self._bad:
            _write_json_atomically(
                path,
                {
                    "dataset": self.name,
                    "image_size": size,
                    "policy": self._policy,
                    "num_listed": len(self._items),
                    "bad_images": self._bad,
                },
            )
            listing = "; ".join(f"{b['path']} ({b['reason']})" for b in self._bad[:10])
            more = f" and {len(self._bad) - 10} more" if len(self._bad) > 10 else ""
            if self._policy == "fail" or not self._written:
                raise BadImagesError(
                    f"{len(self._bad)} of {len(self._items)} images could not be read: {listing}{more}. "
                    f"Full list: {path}. Nothing was prepared. Replace the files, or set "
                    "input.bad_image_policy='skip' to prepare without them."
                )
            logging.warning("skipped %d unreadable image(s) (list in %s): %s%s", len(self._bad), path, listing, more)
        self.info.metadata["image_ids"] = list(self._written)
        self.info.metadata["bad_images"] = list(self._bad)
        self.info.metadata["padding_records"] = self._padding


def make_builder(
    builder_cls, data_dir: str, image_size: int, items: ImageItems = (), bad_image_policy: str = "fail"
) -> ResizedImagesBuilder:
    """The builder of `builder_cls` for any image size (`size224`, ... or e.g. `size48`)."""
    config = next((c for c in builder_cls.BUILDER_CONFIGS if c.image_size == image_size), None)
    if config is None:
        config = ResizedImagesConfig(image_size=int(image_size))
    return builder_cls(
        config=config, data_dir=data_dir, file_format="array_record", items=items, bad_image_policy=bad_image_policy
    )


def is_prepared(builder_cls, data_dir: str, image_size: int) -> bool:
    return make_builder(builder_cls, data_dir, image_size).is_prepared()


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ImageStore:
    """Random access to a prepared dataset's images by record index or image id.

    Picklable (it re-opens the array_record files lazily), so it can go to grain worker processes.
    """

    def __init__(self, dataset_dir: str):
        self.dataset_dir = os.fspath(dataset_dir)
        builder = tfds.builder_from_directory(self.dataset_dir)
        metadata = builder.info.metadata or {}
        if "image_ids" not in metadata:
            raise ImageFileError(
                f"{self.dataset_dir}: no image_ids in the dataset metadata; it was not "
                "written by foprokd_jax.data.image_folder_tfds."
            )
        self.image_ids = tuple(metadata["image_ids"])
        self.image_size = int(metadata["image_size"])
        self.parts = tuple(metadata["parts"])
        self.bad_images = tuple(dict(b) for b in metadata.get("bad_images", ()))
        self.bad_ids = frozenset(b["image_id"] for b in self.bad_images)
        # Records after the real ones that only keep an emptied trailing part valid (see _generate_examples).
        self.padding_records = int(metadata.get("padding_records", 0))
        self._index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self._source = None
        self._check_order()

    def _records(self):
        if self._source is None:
            builder = tfds.builder_from_directory(self.dataset_dir)
            self._source = builder.as_data_source(split="+".join(self.parts))
        return self._source

    def _check_order(self) -> None:
        """Cheap check that record i really holds image_ids[i] (first, middle and last record)."""
        records = self._records()
        if len(records) != len(self.image_ids) + self.padding_records:
            raise ImageFileError(
                f"{self.dataset_dir}: {len(records)} records but {len(self.image_ids)} "
                f"image ids (+ {self.padding_records} padding) in the metadata."
            )
        for i in sorted({0, len(self.image_ids) // 2, len(self.image_ids) - 1}):
            stored = _as_str(records[i]["image_id"])
            if stored != self.image_ids[i]:
                raise ImageFileError(
                    f"{self.dataset_dir}: record {i} holds {stored!r}, expected "
                    f"{self.image_ids[i]!r}; the record order is not the id order."
                )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    def index_of(self, image_id: str) -> int:
        try:
            return self._index[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in {self.dataset_dir}") from None

    def get(self, index: int) -> np.ndarray:
        """The uint8 (S, S, 3) image of record `index`."""
        return np.asarray(self._records()[int(index)]["image"], dtype=np.uint8)


def prepare_images(
    builder_cls,
    items: Union[ImageItems, Callable[[], ImageItems], None],
    data_dir: str,
    image_size: int,
    bad_image_policy: str = "fail",
) -> ImageStore:
    """Prepares the resized dataset once (reused afterwards) and opens it.

    `items`: the (image id, path) pairs, or a function returning them (called only when the dataset has
    to be prepared, so that the source images need not exist afterwards), or None when it must already
    be prepared. A dataset prepared under 'skip' is refused under 'fail' (it lacks images).
    """
    _check_policy(bad_image_policy)
    data_dir = os.fspath(data_dir)
    builder = make_builder(builder_cls, data_dir, image_size)
    if not builder.is_prepared():
        if items is None:
            raise ImageFileError(f"{builder.data_path} is not prepared and no source images were given.")
        listed = items() if callable(items) else items  # Fail early (missing files), before the lock.
        repeated = sorted(i for i, n in collections.Counter(i for i, _ in listed).items() if n > 1)
        if repeated:
            raise ImageFileError(f"{len(repeated)} image id(s) name several files, e.g. {repeated[:5]}.")
        os.makedirs(data_dir, exist_ok=True)
        lock_path = os.path.join(data_dir, f".{builder_cls.name}_size{int(image_size)}.lock")
        with open(lock_path, "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # Another process may be preparing: wait for it.
            try:
                builder = make_builder(builder_cls, data_dir, image_size, listed, bad_image_policy)
                if not builder.is_prepared():
                    builder.download_and_prepare()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    store = ImageStore(os.fspath(builder.data_path))
    if store.bad_images and bad_image_policy == "fail":
        raise BadImagesError(
            f"{store.dataset_dir} was prepared with bad_image_policy='skip' and lacks {len(store.bad_images)} "
            f"unreadable image(s), e.g. {sorted(store.bad_ids)[:5]}; set input.bad_image_policy='skip' to use "
            "it, or delete that folder to prepare again."
        )
    return store


def drop_bad_images(image_ids: Sequence[str], labels: np.ndarray, store: ImageStore, origin: str):
    """Removes the images the store skipped as unreadable (policy 'skip'), with a logged warning."""
    keep = np.asarray([i not in store.bad_ids for i in image_ids], dtype=bool)
    if keep.all():
        return tuple(image_ids), np.asarray(labels, np.int32)
    dropped = [i for i, k in zip(image_ids, keep) if not k]
    logging.warning("%s: dropped %d unreadable image(s) skipped at preparation: %s", origin, len(dropped), dropped[:10])
    return tuple(i for i, k in zip(image_ids, keep) if k), np.asarray(labels, np.int32)[keep]


class StoreSource:
    """Rows (image id, label) joined to a prepared store: grain-compatible random access.

    `source[i]` -> {'image': uint8 (S, S, 3), 'label': int32 scalar}, in the given row order.
    """

    def __init__(self, image_ids: Sequence[str], labels, store: ImageStore, origin: str):
        missing = [i for i in image_ids if i not in store]
        if missing:
            raise MissingImageError(
                f"{len(missing)} of {len(image_ids)} images listed in {origin} are not in the prepared images "
                f"in {store.dataset_dir}, e.g. {missing[:5]}. That folder was prepared from other files: "
                "delete it to prepare again."
            )
        self.image_ids = tuple(image_ids)
        self.origin = origin
        self.store = store
        self.record_indices = np.asarray([store.index_of(i) for i in image_ids], np.int64)
        self.labels = np.asarray(labels, dtype=np.int32)
        if self.labels.shape != (len(self.image_ids),):
            raise ValueError(f"{origin}: {len(self.image_ids)} ids but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.record_indices)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        return {"image": self.store.get(self.record_indices[index]), "label": np.int32(self.labels[index])}

    def __repr__(self) -> str:
        return f"StoreSource({self.origin}, n={len(self)}, size={self.store.image_size})"
