"""Dataset loading: every source ends as the same normalised tensors, splits and subsets are seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import augment_batch, load_dataset
from core.errors import DataError
from core.spec import DatasetSpec


def _write_tree(root: Path, classes: int, per_class: int, mode: str, size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = rng.integers(0, 255, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i}.png")


def test_digits_is_normalised_split_and_upsampled() -> None:
    data = load_dataset(DatasetSpec(name="digits", image_size=24), seed=0)
    assert data.train_x.shape[1:] == (1, 24, 24)
    assert data.num_classes == 10 and data.in_channels == 1
    assert abs(data.train_x.mean().item()) < 1e-3  # normalised with the training statistics
    assert len(data.train_x) + len(data.test_x) == 1797
    assert 0.15 < len(data.test_x) / 1797 < 0.25  # default test_fraction 0.2


def test_same_seed_same_split_and_other_seed_differs() -> None:
    spec = DatasetSpec(name="digits", image_size=8)
    a, b, c = load_dataset(spec, seed=3), load_dataset(spec, seed=3), load_dataset(spec, seed=4)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_y, c.test_y)


def test_shots_per_class_keeps_exactly_that_many_per_class_and_is_seeded() -> None:
    spec = DatasetSpec(name="digits", image_size=8, shots_per_class=7)
    a, b = load_dataset(spec, seed=1), load_dataset(spec, seed=1)
    assert torch.bincount(a.train_y).tolist() == [7] * 10
    assert torch.equal(a.train_x, b.train_x)
    full = load_dataset(DatasetSpec(name="digits", image_size=8), seed=1)
    assert torch.equal(a.test_y, full.test_y)  # the subset never touches the test split


def test_image_folder_rgb_with_its_own_test_split(tmp_path: Path) -> None:
    _write_tree(tmp_path, classes=3, per_class=4, mode="RGB")
    data = load_dataset(DatasetSpec(path=str(tmp_path), image_size=16), seed=0)
    assert data.in_channels == 3 and data.class_names == ["class0", "class1", "class2"]
    assert len(data.train_x) == 12 and len(data.test_x) == 12
    assert data.train_x.shape[-1] == 16


def test_image_folder_grayscale_without_test_split_is_split_by_seed(tmp_path: Path) -> None:
    _write_tree(tmp_path, classes=2, per_class=10, mode="L")
    data = load_dataset(DatasetSpec(path=str(tmp_path / "train"), image_size=12, test_fraction=0.3), seed=0)
    assert data.in_channels == 1
    assert len(data.test_x) == 6 and len(data.train_x) == 14


def test_npz_channels_last_uint8_with_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 255, (20, 10, 10, 3), dtype=np.uint8), y=np.arange(20) % 4,
             x_test=rng.integers(0, 255, (8, 10, 10, 3), dtype=np.uint8), y_test=np.arange(8) % 4)
    data = load_dataset(DatasetSpec(path=str(path), image_size=10), seed=0)
    assert data.train_x.shape == (20, 3, 10, 10) and data.test_x.shape == (8, 3, 10, 10)
    assert data.num_classes == 4


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.array([object()] * 4, dtype=object), "y": np.array([0, 1, 0, 1])}, "pickled"),
        ({"x": np.zeros((4, 8, 8)), "y": np.array([0, 1, 0])}, "samples"),
        ({"x": np.zeros((4, 8, 8))}, "'x' and 'y'"),
        ({"x": np.zeros((4, 8, 8)), "y": np.array([-1, 0, 1, 0])}, "non-negative"),
    ],
)
def test_bad_npz_is_a_data_error_not_a_crash(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(path=str(path)), seed=0)


def test_unknown_name_missing_path_and_single_class_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as unknown:
        load_dataset(DatasetSpec(name="imagenet"), seed=0)
    assert unknown.value.field == "dataset.name"
    with pytest.raises(DataError) as missing:
        load_dataset(DatasetSpec(path=str(tmp_path / "nope")), seed=0)
    assert missing.value.field == "dataset.path"
    _write_tree(tmp_path / "one", classes=1, per_class=3, mode="L")
    with pytest.raises(DataError, match="at least 2 class"):
        load_dataset(DatasetSpec(path=str(tmp_path / "one")), seed=0)


def test_registered_name_resolves_through_the_mapping(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", classes=2, per_class=3, mode="L")
    data = load_dataset(DatasetSpec(name="mine", image_size=8), seed=0, named={"mine": tmp_path / "tree"})
    assert data.num_classes == 2


def test_augment_keeps_shape_and_changes_pixels_reproducibly() -> None:
    x = torch.randn(6, 3, 16, 16)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_split_seed_not_training_seed_decides_the_held_out_images() -> None:
    from core.spec import JobSpec

    specs = [JobSpec.model_validate({"dataset": {"name": "digits", "image_size": 8}, "training": {"seed": s}})
             for s in (0, 5)]
    a, b = (load_dataset(spec.dataset) for spec in specs)
    assert torch.equal(a.test_y, b.test_y) and torch.equal(a.test_x, b.test_x)
    other = load_dataset(DatasetSpec(name="digits", image_size=8, split_seed=1))
    assert not torch.equal(a.test_y, other.test_y)
