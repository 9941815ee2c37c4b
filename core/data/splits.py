"""Which images train and which test: ImageFolder split names, seeded held-out shares, few-shot subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import DataError

# Folder names of a held-out split next to train/, in the order they are looked for.
TEST_SPLIT_NAMES = ("val", "valid", "validation", "test")


def image_folder_classes(root: Path) -> list[str]:
    """Class names of an ImageFolder split: its sub-directories, sorted (torchvision's rule)."""
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def find_splits(root: Path) -> tuple[Path, Path | None]:
    """(train folder, held-out folder or None) of an ImageFolder tree.

    `root/train/<class>/*` plus the first of `val/`, `valid/`, `validation/`, `test/` that
    exists; a tree without `train/` is `root/<class>/*`, all for training.
    """
    if not (root / "train").is_dir():
        return root, None
    for name in TEST_SPLIT_NAMES:
        if (root / name).is_dir():
            return root / "train", root / name
    return root / "train", None


def random_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train indices, test indices): the same seed always holds out the same samples."""
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_test = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        test_idx += idx[:n_test].tolist()
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_idx] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def few_shot(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of a fixed, seeded subset of `shots` samples per class (all of a class if it has fewer)."""
    rng = np.random.default_rng(seed + 1)
    keep: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        keep += rng.permutation(idx)[:shots].tolist()
    return np.sort(np.asarray(keep, dtype=np.int64))


def check_classes(train_y: np.ndarray, test_y: np.ndarray, num_classes: int) -> None:
    present = np.unique(train_y)
    if len(present) < 2:
        raise DataError("the training split holds fewer than 2 classes", field="dataset")
    if len(test_y) == 0:
        raise DataError("the test split is empty", field="dataset")
    if int(max(train_y.max(), test_y.max())) >= num_classes:
        raise DataError("a label is out of range of the class names", field="dataset")
