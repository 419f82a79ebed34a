"""grain input pipelines (no TensorFlow): a resumable training stream and padded eval batches.

Training follows the PyTorch DataLoader the reference uses (docs/reference_semantics.md §8.2): a fresh shuffle every
epoch, `drop_last=True`, batch 32. It is built on one *global* example stream, shared by all
processes:

    epoch e, position j  ->  shuffled example (seed, e)         [same on every process]
                         ->  augmented with rng(seed, e, j)      [same on every process]
    global batch k = positions [k*B, (k+1)*B); process p takes [k*B + p*b, k*B + (p+1)*b)

with B the global and b = B / process_count the per-process batch. So the union of the processes'
k-th batches is exactly the single-process k-th batch: the run sees the same data whatever the
number of hosts, the per-process shards are disjoint, and every process makes the same number of
steps per epoch (N // B, the drop_last count).

`sampler` picks how an epoch's N examples are chosen: 'instance' (default) is the shuffle above;
'class_balanced' and 'sqrt' draw N examples with replacement, class-aware (`samplers.py`). All three are
functions of (seed, epoch, position), so everything said here holds for each of them.

Evaluation keeps every example exactly once: the data is laid out in order in global batches of
B, the last one padded with zero images and `mask=False`, and all processes yield
ceil(N / B) batches (big_vision's `make_for_inference` / clu's `pad_dataset` idea).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import grain
import numpy as np
from absl import flags

from foprokd_jax.data import augment as augment_lib
from foprokd_jax.data import samplers as samplers_lib


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Optimiser steps per epoch with drop_last (e.g. 20782 // 32 = 649 at imb 0.002)."""
    return num_examples // global_batch_size


def _per_process_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process_index={process_index} for process_count={process_count}")
    if global_batch_size % process_count != 0:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be divisible by "
            f"process_count={process_count} (each process loads an equal slice)."
        )
    return global_batch_size // process_count


class _ProcessSliceOfGlobalBatches(grain.MapDataset):
    """This process's slice of every global batch, one epoch long (drop_last applied).

    Index i of epoch e maps to parent index e*N + k*B + p*b + r (k = step, r = row in batch), so
    upstream `shuffle` / `random_map` still see which epoch they are in (grain encodes the epoch
    in indices past the length, and `repeat` relies on that).
    """

    def __init__(self, parent: grain.MapDataset, global_batch_size: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._parent_length = len(parent)
        self._global = global_batch_size
        self._local = _per_process_batch(global_batch_size, process_index, process_count)
        self._offset = process_index * self._local
        self._steps = self._parent_length // global_batch_size
        if self._steps == 0:
            raise ValueError(
                f"{self._parent_length} examples are fewer than one global batch "
                f"of {global_batch_size}; drop_last would leave nothing."
            )

    def __len__(self) -> int:
        return self._steps * self._local

    def _parent_index(self, index: int) -> int:
        epoch, in_epoch = divmod(index, len(self))
        step, row = divmod(in_epoch, self._local)
        return epoch * self._parent_length + step * self._global + self._offset + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def __str__(self) -> str:
        return f"ProcessSliceOfGlobalBatches(global={self._global}, local={self._local}, offset={self._offset})"


def _augment_example(example: dict, rng: np.random.Generator, augment_fn: Callable = augment_lib.train_augment) -> dict:
    return {"image": augment_fn(example["image"], rng), "label": example["label"]}


def make_train_dataset(
    source,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    augment: bool = True,
    sampler: str = "instance",
    labels=None,
) -> grain.MapDataset:
    """The infinite per-process example stream (before batching); see the module docstring.

    sampler: 'instance' (shuffle, every example once per epoch), 'class_balanced' or 'sqrt' (samplers.py).
    labels: the training labels in source order, for the class-aware samplers (default `source.labels`).
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must lie in [0, 2**32); got {seed}")
    if sampler not in samplers_lib.SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; available: {samplers_lib.SAMPLERS}")
    if sampler == "instance":
        # Unchanged since before the samplers existed: the same (seed, epoch) gives the same stream.
        ds = grain.MapDataset.source(source).seed(seed).shuffle()
    else:
        ds = samplers_lib.resampled_source(source, sampler, seed, labels).seed(seed)
    if augment:
        # Before the process slice, so the rng of an example depends only on its global position.
        ds = ds.random_map(_augment_example)
    ds = _ProcessSliceOfGlobalBatches(ds, global_batch_size, process_index, process_count)
    return ds.repeat()


def make_train_iterator(
    source,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    augment: bool = True,
    num_threads: int = 8,
    sampler: str = "instance",
    labels=None,
):
    """Endless iterator of {'image': uint8 (b, S, S, 3), 'label': int32 (b,)} training batches.

    b = global_batch_size // process_count. Checkpointable: `state = it.get_state()` and later
    `it.set_state(state)` (on a fresh iterator from the same arguments) continues exactly.
    `worker_count` > 0 moves loading and augmentation to that many worker processes;
    `num_threads` is the reading/augmenting thread pool used in-process. `sampler`/`labels`: see
    `make_train_dataset`.
    """
    local_batch = _per_process_batch(global_batch_size, process_index, process_count)
    ds = make_train_dataset(
        source, global_batch_size, seed, process_index, process_count, augment, sampler=sampler, labels=labels
    )
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * local_batch, 16))
    # Batching the element stream is exact: each epoch holds a whole number of local batches.
    it_ds = ds.to_iter_dataset(read_options).batch(local_batch, drop_remainder=True, batch_fn=_stack_examples)
    if worker_count > 0:
        # grain's worker processes read absl flags; outside an absl app (pytest, notebooks,
        # argparse launchers) they would raise UnparsedFlagAccessError, so use the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)


def _stack_examples(examples) -> dict:
    return {
        "image": np.stack([e["image"] for e in examples]).astype(np.uint8, copy=False),
        "label": np.asarray([e["label"] for e in examples], dtype=np.int32),
    }


class EvalBatches:
    """Re-iterable padded eval batches for one process; `len()` is the same on every process.

    Each batch: {'image': uint8 (b, S, S, 3), 'label': int32 (b,), 'mask': bool (b,)}. Global batch
    k covers examples [k*B, (k+1)*B) in source order; process p holds rows [p*b, (p+1)*b) of it.
    Padding rows have a zero image, label 0 and mask False.
    """

    def __init__(
        self, source, global_batch_size: int, process_index: int = 0, process_count: int = 1, num_threads: int = 8
    ):
        self.source = source
        self.num_examples = len(source)
        self.local_batch = _per_process_batch(global_batch_size, process_index, process_count)
        self.global_batch = global_batch_size
        self.offset = process_index * self.local_batch
        self.num_batches = math.ceil(self.num_examples / global_batch_size)
        self.num_threads = num_threads
        first = source[0]
        self._pad = {"image": np.zeros_like(first["image"]), "label": np.int32(0), "mask": False}

    def __len__(self) -> int:
        return self.num_batches

    def global_index(self, batch: int, row: int) -> int:
        """Source index of `row` in this process's batch `batch` (>= num_examples: padding)."""
        return batch * self.global_batch + self.offset + row

    def _example(self, local_position: int) -> dict:
        batch, row = divmod(local_position, self.local_batch)
        index = self.global_index(batch, row)
        if index >= self.num_examples:
            return self._pad
        example = self.source[index]
        return {"image": example["image"], "label": np.int32(example["label"]), "mask": True}

    def __iter__(self) -> Iterator[dict]:
        positions = grain.MapDataset.range(self.num_batches * self.local_batch)
        ds = positions.map(self._example).to_iter_dataset(
            grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=max(2 * self.local_batch, 16))
        )
        for examples in ds.batch(self.local_batch, batch_fn=list):
            batch = _stack_examples(examples)
            batch["mask"] = np.asarray([e["mask"] for e in examples], dtype=bool)
            yield batch


def make_eval_batches(source, global_batch_size: int, process_index: int = 0, process_count: int = 1) -> EvalBatches:
    """Eval batches without shuffling or dropping; see `EvalBatches`."""
    return EvalBatches(source, global_batch_size, process_index, process_count)
