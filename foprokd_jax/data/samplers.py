"""Class-aware training samplers for long-tailed data, as grain MapDatasets (docs/long_tail.md).

* 'instance': every example once per epoch in a fresh shuffle (the reference DataLoader). It is built in
  `pipeline.make_train_dataset` exactly as before this module existed; nothing here touches it.
* 'class_balanced': class-aware sampling (Shen et al., "Relay Backpropagation", ECCV 2016; Kang et al.,
  "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020, q = 0): a class drawn
  uniformly among the classes that have training examples, then an example uniformly within it.
* 'sqrt': square-root sampling (Mahajan et al., ECCV 2018; Kang et al. 2020, q = 1/2): class c drawn with
  probability proportional to sqrt(n_c), then an example uniformly within it.

The re-sampled samplers draw with replacement; an epoch has as many draws as the dataset has examples
(so steps per epoch are unchanged). Draw j of epoch e is a pure function of (seed, e, j): any position can
be read in any order, which makes the stream deterministic, exactly resumable from grain's iterator state
(a position) and sliceable per process like the instance stream (pipeline.py).
"""

from __future__ import annotations

import grain
import numpy as np

SAMPLERS = ("instance", "class_balanced", "sqrt")
# Mixed into every draw's seed so sampler draws never share a stream with augmentation or shuffling.
_SAMPLER_SALT = 0x5A3F_11C7


def check_labels(labels, num_examples: int) -> np.ndarray:
    """The training labels as an int64 vector of length `num_examples`, or a clear error."""
    if labels is None:
        raise ValueError(
            "a class-aware sampler needs the training labels: pass labels= (LoadedDataset.train_labels)"
            " or use a source with a `.labels` attribute"
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_examples:
        raise ValueError(
            f"sampler labels must be a 1-D vector with one label per training example "
            f"({num_examples}), got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise ValueError(
            f"sampler labels must be non-negative integers, got dtype {labels.dtype}, "
            f"min {labels.min() if len(labels) else None}"
        )
    return labels.astype(np.int64)


def class_probabilities(labels, sampler: str, num_classes: int = 0) -> np.ndarray:
    """P(class c) per draw, over classes 0..max(max label, num_classes - 1); classes without examples get 0."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
    if sampler == "class_balanced":
        mass = (counts > 0).astype(np.float64)
    elif sampler == "sqrt":
        mass = np.sqrt(counts)
    elif sampler == "instance":
        mass = counts
    else:
        raise ValueError(f"Unknown sampler config.input.sampler={sampler!r}; available: {SAMPLERS}")
    return mass / mass.sum()


class ClassResampledEpochs(grain.MapDataset):
    """Epochs of i.i.d. class-aware draws from `parent` (a MapDataset over the training source).

    Index i = e*N + j (grain's epoch encoding past the length, as `shuffle` and `repeat` use it) returns
    parent[k] with k drawn for (seed, e, j): class c ~ class_probs, then k uniform among c's examples.
    """

    def __init__(self, parent: grain.MapDataset, labels, class_probs, seed: int):
        super().__init__(parent)
        self._length = len(parent)
        labels = check_labels(labels, self._length)
        probs = np.asarray(class_probs, np.float64)
        self._classes = np.flatnonzero(probs > 0)
        if not len(self._classes):
            raise ValueError("sampler class probabilities are all zero")
        # Members per drawable class; a class with probability > 0 must have examples.
        self._members = [np.flatnonzero(labels == c) for c in self._classes]
        empty = [int(c) for c, m in zip(self._classes, self._members) if not len(m)]
        if empty:
            raise ValueError(f"sampler gives probability > 0 to classes without examples: {empty}")
        cdf = np.cumsum(probs[self._classes] / probs[self._classes].sum())
        cdf[-1] = 1.0  # guards the draw u in [0, 1) against the sum rounding below 1
        self._cdf = cdf
        self._seed = int(seed)

    def __len__(self) -> int:
        return self._length

    def source_index(self, index: int) -> int:
        """The parent index of draw `index` (= epoch * N + position)."""
        epoch, position = divmod(int(index), self._length)
        rng = np.random.default_rng((_SAMPLER_SALT, self._seed, epoch, position))
        which = int(np.searchsorted(self._cdf, rng.random(), side="right"))
        members = self._members[which]
        return int(members[rng.integers(len(members))])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.source_index(index)]

    def __str__(self) -> str:
        return f"ClassResampledEpochs(n={self._length}, classes={len(self._classes)}, seed={self._seed})"


def resampled_source(source, sampler: str, seed: int, labels=None) -> grain.MapDataset:
    """The class-aware example stream over `source` for sampler 'class_balanced' or 'sqrt'.

    `labels` defaults to `source.labels`. Each epoch is N draws; see `ClassResampledEpochs`.
    """
    if sampler not in SAMPLERS or sampler == "instance":
        raise ValueError(f"resampled_source takes a class-aware sampler {SAMPLERS[1:]}, got {sampler!r}")
    if labels is None:
        labels = getattr(source, "labels", None)
    labels = check_labels(labels, len(source))
    return ClassResampledEpochs(grain.MapDataset.source(source), labels, class_probabilities(labels, sampler), seed)
