"""CRCKD's training stream: two augmented views, the sample's index and its contrast indices (docs/crckd.md §R3, §R4.2).

Per example (dataloaders/dataset.py `ISIC_InstanceSample`, `TransformTwice`; utils/transform.py):
* student view and teacher view: the same random transform applied independently twice,
  RandomAffine(degrees=10, translate=(0.02, 0.02)) then RandomHorizontalFlip (the images are already
  resized to S x S when prepared);
* teacher view only: a random vertical flip (p = 0.5) then rot90 by k ~ U{0..3} (`teacher_rot_flip`);
* `index`: the example's position in the training source = its memory-bank slot;
* `contrast_idx` (P + K,): P positives from the anchor's class without replacement, column 0 set to the
  anchor's own index, then K negatives from the other classes ('sup'; with replacement only when that
  pool has fewer than K examples) or from every other example ('unsup').

All randomness of an example comes from grain's per-element generator, seeded by (seed, global position
in the epoch stream), exactly like `data/pipeline.py`: the stream is deterministic, independent of the
number of processes, and resumes exactly from grain's iterator state.

The affine warp goes through PIL's C `Image.transform` with torchvision's inverse matrix (NEAREST, fill 0:
what torchvision's PIL backend does), flips and rot90 through PIL's `transpose` (tested against
torchvision / torch.flip / torch.rot90). No per-pixel Python.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np
from absl import flags
from PIL import Image

from foprokd_jax.data import augment as augment_lib
from foprokd_jax.data import samplers as samplers_lib
from foprokd_jax.data.pipeline import _per_process_batch, _ProcessSliceOfGlobalBatches

POSITIVE_MODES = ("multi_pos", "exact")
NEGATIVE_MODES = ("sup", "unsup")


# torch.rot90(chw, k, dims=[1, 2]) rotates from H towards W, i.e. counter-clockwise: PIL's ROTATE_*.
_ROTATIONS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


def _affine_pil(img: Image.Image, angle: float, translate: Sequence[int]) -> Image.Image:
    matrix = augment_lib._inverse_affine_matrix(img.width, img.height, angle, tuple(translate), 1.0)
    return img.transform(img.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=(0, 0, 0))


def _random_view_pil(
    img: Image.Image, rng: np.random.Generator, degrees: float, translate: float, hflip: bool
) -> Image.Image:
    angle = float(rng.uniform(-degrees, degrees))
    tx = int(round(float(rng.uniform(-translate * img.width, translate * img.width))))
    ty = int(round(float(rng.uniform(-translate * img.height, translate * img.height))))
    if angle or tx or ty:
        img = _affine_pil(img, angle, (tx, ty))
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _rot_flip_pil(img: Image.Image, vflip: bool, k: int) -> Image.Image:
    if vflip:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return img.transpose(_ROTATIONS[k]) if k % 4 else img


def affine(image: np.ndarray, angle: float, translate: Sequence[int]) -> np.ndarray:
    """torchvision `F.affine(pil, angle, translate, scale=1, shear=0, NEAREST, fill=0)` on uint8 HWC."""
    return np.asarray(_affine_pil(Image.fromarray(image, "RGB"), angle, translate))


def random_view(
    image: np.ndarray, rng: np.random.Generator, degrees: float, translate: float, hflip: bool = True
) -> np.ndarray:
    """RandomAffine(degrees, translate=(t, t)) + RandomHorizontalFlip, torchvision's draws and rounding.

    angle ~ U(-degrees, degrees); tx = round(U(-t W, t W)), ty = round(U(-t H, t H)) (RandomAffine.get_params).
    """
    return np.asarray(_random_view_pil(Image.fromarray(image, "RGB"), rng, degrees, translate, hflip))


def rot_flip(image: np.ndarray, vflip: bool, k: int) -> np.ndarray:
    """torch.flip(chw, [1]) (vertical) if `vflip`, then torch.rot90(chw, k, dims=[1, 2]), on HWC."""
    return np.asarray(_rot_flip_pil(Image.fromarray(image, "RGB"), vflip, k % 4))


class ContrastSampler:
    """Draws one anchor's contrast indices (docs/crckd.md §R4.2); the class pools are built once from the labels."""

    def __init__(
        self,
        train_labels,
        num_classes: int,
        num_positives: int,
        num_negatives: int,
        positive_mode: str = "multi_pos",
        negative_mode: str = "sup",
    ):
        labels = np.asarray(train_labels, np.int64)
        if positive_mode not in POSITIVE_MODES:
            raise ValueError(f"config.crckd.positive_mode={positive_mode!r} is not one of {POSITIVE_MODES}")
        if negative_mode not in NEGATIVE_MODES:
            raise ValueError(f"config.crckd.negative_mode={negative_mode!r} is not one of {NEGATIVE_MODES}")
        if num_negatives < 1:
            raise ValueError(f"config.crckd.nce_k={num_negatives} must be >= 1")
        if positive_mode == "exact" and num_positives != 1:
            raise ValueError(f"positive_mode='exact' has exactly one positive; got config.crckd.nce_p={num_positives}")
        if num_positives < 1:
            raise ValueError(f"config.crckd.nce_p={num_positives} must be >= 1")
        self.num_examples = len(labels)
        self.num_positives, self.num_negatives = num_positives, num_negatives
        self.positive_mode, self.negative_mode = positive_mode, negative_mode
        self.members = [np.flatnonzero(labels == k) for k in range(num_classes)]
        self.others = [np.flatnonzero(labels != k) for k in range(num_classes)]
        for k, members in enumerate(self.members):
            if not len(members):
                continue
            if positive_mode == "multi_pos" and len(members) < num_positives:
                raise ValueError(
                    f"class {k} has {len(members)} training examples, fewer than "
                    f"config.crckd.nce_p={num_positives} positives drawn without replacement"
                )
            if negative_mode == "sup" and not len(self.others[k]):
                raise ValueError(f"class {k} holds every training example: 'sup' negatives need another class")
        if negative_mode == "unsup" and self.num_examples < 2:
            raise ValueError("'unsup' negatives need at least 2 training examples")

    @property
    def width(self) -> int:
        return self.num_positives + self.num_negatives

    def sample(self, index: int, label: int, rng: np.random.Generator) -> np.ndarray:
        """int32 (P + K,): positives (column 0 = `index`) then negatives."""
        if self.positive_mode == "multi_pos":
            positives = rng.choice(self.members[label], self.num_positives, replace=False)
        else:
            positives = np.empty(1, np.int64)
        positives[0] = index  # memory.py `idx[:, 0] = y`: the anchor's own slot is always positive #1
        if self.negative_mode == "sup":
            pool = self.others[label]
            negatives = rng.choice(pool, self.num_negatives, replace=self.num_negatives > len(pool))
        else:
            # Uniform over every example except the anchor, with replacement.
            draws = rng.integers(0, self.num_examples - 1, self.num_negatives)
            negatives = draws + (draws >= index)
        return np.concatenate([positives, negatives]).astype(np.int32)


class TwoViewTransform:
    """grain `random_map` transform: example {'image', 'label', 'index'} -> the CRCKD training example."""

    def __init__(
        self,
        sampler: ContrastSampler,
        degrees: float = 10.0,
        translate: float = 0.02,
        hflip: bool = True,
        teacher_rot_flip: bool = True,
        augment: bool = True,
    ):
        self.sampler = sampler
        self.degrees, self.translate, self.hflip = degrees, translate, hflip
        self.teacher_rot_flip, self.augment = teacher_rot_flip, augment

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        image = example["image"]
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        # The views stay PIL images until the end: PIL's C flips/rotations beat numpy's strided copies.
        student = teacher = Image.fromarray(image, "RGB")
        if self.augment:
            student = _random_view_pil(student, rng, self.degrees, self.translate, self.hflip)
            teacher = _random_view_pil(teacher, rng, self.degrees, self.translate, self.hflip)
        if self.teacher_rot_flip:
            if image.shape[0] != image.shape[1]:
                raise ValueError(f"teacher rot90 needs square images, got {image.shape[:2]}")
            teacher = _rot_flip_pil(teacher, bool(rng.integers(0, 2)), int(rng.integers(0, 4)))
        label, index = int(example["label"]), int(example["index"])
        return {
            "image": np.asarray(student),
            "image_teacher": np.asarray(teacher),
            "label": np.int32(label),
            "index": np.int32(index),
            "contrast_idx": self.sampler.sample(index, label, rng),
        }


class _AttachIndex:
    """example -> example + {'index': source position} (a class, not a lambda: grain workers pickle it)."""

    def __init__(self, num_examples: int):
        self.num_examples = num_examples

    def __call__(self, index: int, example: dict) -> dict:
        return dict(example, index=index % self.num_examples)


def _stack(examples) -> dict:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def make_train_dataset(
    source,
    transform: TwoViewTransform,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    sampler: str = "instance",
    labels=None,
) -> grain.MapDataset:
    """The infinite per-process CRCKD example stream (before batching); `pipeline.make_train_dataset` twin."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must lie in [0, 2**32); got {seed}")
    num_examples = len(source)
    # The source position is the memory slot. Indices past the length encode the epoch (grain), hence the %.
    ds = grain.MapDataset.source(source).map_with_index(_AttachIndex(num_examples))
    if sampler == "instance":
        ds = ds.seed(seed).shuffle()
    elif sampler in samplers_lib.SAMPLERS:
        labels = samplers_lib.check_labels(labels, num_examples)
        ds = samplers_lib.ClassResampledEpochs(
            ds, labels, samplers_lib.class_probabilities(labels, sampler), seed
        ).seed(seed)
    else:
        raise ValueError(f"Unknown sampler config.input.sampler={sampler!r}; available: {samplers_lib.SAMPLERS}")
    # Before the process slice, so an example's randomness depends only on its global position.
    ds = ds.random_map(transform)
    return _ProcessSliceOfGlobalBatches(ds, global_batch_size, process_index, process_count).repeat()


def make_train_iterator(
    source,
    transform: TwoViewTransform,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    num_threads: int = 8,
    sampler: str = "instance",
    labels=None,
):
    """Endless, checkpointable iterator of this process's slice of each global training batch.

    Batch: image, image_teacher uint8 (b, S, S, 3); label, index int32 (b,); contrast_idx int32 (b, P + K).
    """
    local_batch = _per_process_batch(global_batch_size, process_index, process_count)
    ds = make_train_dataset(
        source, transform, global_batch_size, seed, process_index, process_count, sampler=sampler, labels=labels
    )
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * local_batch, 16))
    it_ds = ds.to_iter_dataset(read_options).batch(local_batch, drop_remainder=True, batch_fn=_stack)
    if worker_count > 0:
        # As pipeline.py: grain workers read absl flags, which are unparsed outside an absl app.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)
