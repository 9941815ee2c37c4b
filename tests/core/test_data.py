"""Dataset loading: every source ends as the same normalised tensors, splits and subsets are seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import MemoryImages, StreamImages, augment_batch, load_dataset
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


def _photo_tree(root: Path, held_out: str | None, sizes: tuple[tuple[int, int], ...] = ((40, 24), (24, 36))) -> None:
    """train/ (+ `held_out`/) of 2 classes, 3 RGB photos each, in mixed sizes."""
    rng = np.random.default_rng(1)
    for split in ("train", held_out) if held_out else ("train",):
        for label in range(2):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(3):
                width, height = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


@pytest.mark.parametrize("held_out", ["val", "valid", "validation", "test"])
def test_each_held_out_folder_name_is_the_test_split(tmp_path: Path, held_out: str) -> None:
    _photo_tree(tmp_path, held_out)
    data = load_dataset(DatasetSpec(path=str(tmp_path), image_size=16), seed=0)
    assert data.test_split == held_out
    assert (len(data.train), len(data.test)) == (6, 6)
    assert data.train.placement == "memory"  # the store held in RAM:
    assert data.train.uint8(slice(None)).dtype == torch.uint8  # uint8, 4x smaller than float32


def test_a_random_held_out_share_only_when_no_held_out_folder_exists(tmp_path: Path) -> None:
    _photo_tree(tmp_path, None)
    data = load_dataset(DatasetSpec(path=str(tmp_path), image_size=16, test_fraction=0.34), seed=0)
    assert data.test_split == "random" and len(data.train) + len(data.test) == 6 and len(data.test) == 2


def test_non_square_photos_are_resized_by_the_shorter_side_and_center_cropped(tmp_path: Path) -> None:
    stripes = np.zeros((20, 60, 3), dtype=np.uint8)
    stripes[:, :20, 0] = 255  # red | green | blue thirds: only green survives a center crop
    stripes[:, 20:40, 1] = 255
    stripes[:, 40:, 2] = 255
    for label in range(2):
        (tmp_path / f"c{label}").mkdir()
        Image.fromarray(stripes).save(tmp_path / f"c{label}" / "wide.png")
        Image.fromarray(stripes).save(tmp_path / f"c{label}" / "wide2.png")
    data = load_dataset(DatasetSpec(path=str(tmp_path), image_size=10, test_fraction=0.5), seed=0)
    pixels = data.train.uint8(slice(None)).float()
    assert pixels.shape[1:] == (3, 10, 10)
    assert pixels[:, 1, :, 2:-2].min() > 200 and pixels[:, 0, :, 2:-2].max() < 60 and pixels[:, 2, :, 2:-2].max() < 60


def test_with_the_image_cache_off_above_the_budget_the_training_split_streams_the_same_images_with_stable_indices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISTILL_DATA_CACHE_MB", "0")
    _photo_tree(tmp_path, "val")
    spec = DatasetSpec(path=str(tmp_path), image_size=16)
    in_memory = load_dataset(spec, seed=0)
    streamed = load_dataset(spec, seed=0, memory_budget=0)
    assert streamed.streamed and not in_memory.streamed
    assert isinstance(streamed.train, StreamImages) and isinstance(in_memory.train, MemoryImages)
    index = torch.tensor([4, 0, 2])
    torch.testing.assert_close(streamed.train.take(index), in_memory.train.take(index), atol=1e-4, rtol=1e-4)

    streamed.train.workers = 1  # one decoding process: the DataLoader worker path itself
    order = torch.tensor([5, 1, 3, 0, 2, 4])
    batches = list(streamed.train.batches(order, 4, torch.device("cpu"), False, torch.Generator().manual_seed(0)))
    assert torch.equal(torch.cat([index for _, _, index in batches]), order)
    assert torch.equal(torch.cat([y for _, y, _ in batches]), streamed.train.labels[order])
    assert batches[0][0].shape == (4, 3, 16, 16) and batches[0][0].dtype == torch.float32
