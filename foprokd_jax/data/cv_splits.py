"""Seeded, deterministic cross-validation splits in numpy (no scikit-learn at run time).

- `stratified_kfold_test_folds`: the test-fold index of every row exactly as scikit-learn's
  `StratifiedKFold(n_splits, shuffle=True, random_state=seed)` assigns it (the algorithm of
  scikit-learn >= 0.22, checked against 1.9.1 in tests/test_datasets.py). CRCKD's APTOS folds are
  `StratifiedKFold(5, shuffle=True, random_state=2020)` over the CSV rows (docs/crckd.md §R8), so the
  same rows in the same order give the same folds.
- `stratified_group_kfold_test_folds`: the same idea for grouped rows (HAM10000 lesions): every group
  lands in one fold, and each class's images are spread as evenly as the group sizes allow.
- `carve_validation`: a seeded, stratified (optionally grouped) validation subset of the training rows.
- `check_disjoint`: refuses splits that share an image (leakage).
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import numpy as np


class LeakageError(ValueError):
    """The same image is listed in two splits."""


def _encode_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Class codes 0, 1, ... in order of first appearance (scikit-learn's StratifiedKFold encoding)."""
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    _, appearance_rank = np.unique(first_index, return_inverse=True)
    return appearance_rank[inverse.reshape(-1)]


def stratified_kfold_test_folds(labels: Sequence[int], n_splits: int = 5, seed: int = 2020) -> np.ndarray:
    """Test fold (0-based) of every row, identical to scikit-learn's shuffled StratifiedKFold.

    The steps mirror scikit-learn's `_make_test_folds`: classes are numbered by first appearance;
    the per-fold quota of each class comes from dealing the sorted codes round-robin over the folds;
    each class's block of fold indices is shuffled with one shared `RandomState(seed)`, class by class.
    """
    codes = _encode_by_first_appearance(np.asarray(labels).reshape(-1))
    if codes.size == 0:
        raise ValueError("cannot split an empty label list")
    num_classes = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=num_classes)
    if np.all(counts < n_splits):
        raise ValueError(
            f"n_splits={n_splits} is greater than the number of members of every class (class sizes {counts.tolist()})."
        )
    if counts.min() < n_splits:
        logging.warning(
            "the smallest class has only %d members, fewer than n_splits=%d: some test folds will not contain it",
            counts.min(),
            n_splits,
        )
    rng = np.random.RandomState(seed)
    sorted_codes = np.sort(codes)
    quota = np.asarray([np.bincount(sorted_codes[i::n_splits], minlength=num_classes) for i in range(n_splits)])
    test_folds = np.empty(codes.size, dtype=np.int64)
    for k in range(num_classes):
        folds_for_class = np.arange(n_splits).repeat(quota[:, k])
        rng.shuffle(folds_for_class)
        test_folds[codes == k] = folds_for_class
    return test_folds


def _group_table(labels: np.ndarray, groups: np.ndarray):
    """Unique groups in first-appearance order, their label and size; a group must have one label."""
    unique, first_index, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first_index, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group_of_row = rank[inverse.reshape(-1)]
    group_labels = labels[first_index[order]]
    mixed = np.flatnonzero(labels != group_labels[group_of_row])
    if mixed.size:
        row = int(mixed[0])
        raise ValueError(
            f"group {str(groups[row])!r} has rows with different labels "
            f"({sorted(set(labels[group_of_row == group_of_row[row]].tolist()))}); a group "
            "(e.g. a HAM10000 lesion) must have a single label."
        )
    sizes = np.bincount(group_of_row, minlength=order.size)
    return group_of_row, group_labels, sizes


def stratified_group_kfold_test_folds(
    labels: Sequence[int], groups: Sequence, n_splits: int = 5, seed: int = 0
) -> np.ndarray:
    """Test fold (0-based) of every row such that all rows of a group share a fold.

    Per class (in label order), the class's groups are shuffled with `default_rng([seed, label])`,
    stably sorted by size (largest first), and each goes to the fold holding the fewest images of that
    class so far (ties: the fold with the fewest images overall, then the lowest index). Class
    counts per fold then differ by at most the largest group size. Deterministic for a seed.
    """
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if labels.shape != groups.shape:
        raise ValueError(f"labels ({labels.shape}) and groups ({groups.shape}) differ in length")
    group_of_row, group_labels, sizes = _group_table(labels, groups)
    group_fold = np.full(sizes.size, -1, dtype=np.int64)
    fold_totals = np.zeros(n_splits, dtype=np.int64)
    for label in np.unique(group_labels):
        members = np.flatnonzero(group_labels == label)
        members = members[np.random.default_rng([seed, int(label)]).permutation(members.size)]
        members = members[np.argsort(-sizes[members], kind="stable")]
        class_totals = np.zeros(n_splits, dtype=np.int64)
        for g in members:
            fold = min(range(n_splits), key=lambda f: (class_totals[f], fold_totals[f], f))
            group_fold[g] = fold
            class_totals[fold] += sizes[g]
            fold_totals[fold] += sizes[g]
    return group_fold[group_of_row]


def carve_validation(
    labels: Sequence[int], candidates: np.ndarray, fraction: float, seed, groups: Optional[Sequence] = None
) -> np.ndarray:
    """Boolean mask over all rows: the validation rows, chosen among `candidates` (row indices).

    Per class, about `fraction` of the class's candidate images (whole groups when `groups` is given)
    go to validation: the class's candidate groups are shuffled with `default_rng([*seed, label])`
    and a group joins while the running image count at its middle stays below the target, so the
    class's validation count is within half a group of `fraction * candidates`. A class with at least
    3 candidate groups always gives at least one (tiny classes would otherwise be absent from val).
    """
    labels = np.asarray(labels).reshape(-1)
    mask = np.zeros(labels.size, dtype=bool)
    if fraction <= 0:
        return mask
    if not fraction < 1:
        raise ValueError(f"validation fraction must lie in [0, 1); got {fraction}")
    candidates = np.asarray(candidates, dtype=np.int64)
    group_ids = np.arange(labels.size) if groups is None else np.asarray(groups).reshape(-1)
    group_of_row, group_labels, group_sizes = _group_table(labels[candidates], group_ids[candidates])
    seed = tuple(np.atleast_1d(seed).tolist())
    for label in np.unique(group_labels):
        members = np.flatnonzero(group_labels == label)
        members = members[np.random.default_rng([*seed, int(label)]).permutation(members.size)]
        sizes = group_sizes[members]
        target = fraction * sizes.sum()
        middles = np.cumsum(sizes) - sizes / 2.0
        take = middles < target
        if members.size >= 3:
            take[0] = True  # Every class that can spare a group is represented in validation.
        chosen = members[take]
        mask[candidates[np.isin(group_of_row, chosen)]] = True
    return mask


def check_disjoint(split_ids: Dict[str, Sequence[str]], origin: Dict[str, str]) -> None:
    """Raises LeakageError when two splits share an image id (names the splits, their files, examples)."""
    names = list(split_ids)
    sets = {name: set(split_ids[name]) for name in names}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(sets[first] & sets[second])
            if shared:
                raise LeakageError(
                    f"{len(shared)} image(s) are in both the {first!r} split ({origin.get(first, '?')}) and "
                    f"the {second!r} split ({origin.get(second, '?')}), e.g. {shared[:5]}; refusing to train "
                    "on images that are evaluated."
                )


def kfold_splits(
    labels: Sequence[int],
    fold: int,
    seed: int,
    val_fraction: float,
    dataset: str,
    num_folds: int = 5,
    groups: Optional[Sequence] = None,
) -> Dict[str, np.ndarray]:
    """Row indices (ascending, i.e. file order) of 'train', 'test' and, if val_fraction > 0, 'val'.

    'test' is fold `fold` (1-based) of a stratified k-fold partition: scikit-learn's shuffled
    StratifiedKFold without groups, `stratified_group_kfold_test_folds` with them. `val_fraction` is a
    fraction of ALL rows, carved (stratified, grouped, seeded by (seed, fold)) out of the other folds.
    """
    if isinstance(fold, bool) or not 1 <= int(fold) <= num_folds:
        raise ValueError(f"input.fold={fold!r} must be in 1..{num_folds} for {dataset}")
    max_val = 1 - 1 / num_folds
    if not 0 <= val_fraction < max_val:
        raise ValueError(
            f"input.val_fraction={val_fraction} must lie in [0, {max_val:g}) for {dataset} (a "
            "fraction of all images, taken from the training folds)"
        )
    if groups is None:
        test_folds = stratified_kfold_test_folds(labels, num_folds, seed)
    else:
        test_folds = stratified_group_kfold_test_folds(labels, groups, num_folds, seed)
    test = np.flatnonzero(test_folds == int(fold) - 1)
    rest = np.flatnonzero(test_folds != int(fold) - 1)
    val_mask = carve_validation(labels, rest, val_fraction / max_val, (seed, int(fold)), groups)
    splits = {"train": rest[~val_mask[rest]], "test": test}
    if val_fraction > 0:
        splits["val"] = np.flatnonzero(val_mask)
    return splits
