"""Decode once, read many: the verified image store, its two placements and the augmentation recipes."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import StoreImages, load_dataset, open_or_build
from core.data.recipes import apply_recipe, crop_boxes, resolve_recipe
from core.data.sources import image_folder
from core.data.store import evict
from core.models import build_model
from core.spec import DatasetSpec
from core.terms import cross_entropy_only
from core.train.loop import DistillationObjective, OptimConfig, train


def _photos(root: Path, per_class: int = 6, size: tuple[int, int] = (40, 30)) -> Path:
    """train/ + val/ of 2 classes of random JPEG photos (class 1 brighter, so a model can learn it)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(2):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 128, (size[1], size[0], 3), dtype=np.uint8) + 100 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def _store_of(tmp_path: Path, cache: Path, image_size: int = 16, **kwargs):
    source = image_folder(tmp_path)
    return open_or_build(source.files, source.labels, source.mode, image_size, root=cache, **kwargs)


def test_a_second_job_on_the_same_set_reads_the_store_without_decoding_again(tmp_path: Path) -> None:
    spec = DatasetSpec(path=str(_photos(tmp_path / "data")), image_size=16)
    first = load_dataset(spec, seed=0)
    assert isinstance(first.train, StoreImages) and first.train.store.built
    pixel_file = first.train.store.pixel_file
    before = os.stat(pixel_file)
    second = load_dataset(spec, seed=0)
    after = os.stat(pixel_file)
    assert not second.train.store.built and not second.test.store.built  # opened, not decoded
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # the same file, untouched
    assert torch.equal(second.train.uint8(slice(None)), first.train.uint8(slice(None)))
    assert second.mean == first.mean and second.std == first.std


def _prepare(root: str, cache: str, barrier, results) -> None:
    torch.set_num_threads(1)
    source = image_folder(Path(root))
    barrier.wait()
    store = open_or_build(source.files, source.labels, source.mode, 24, root=Path(cache), workers=0)
    results.put((store.built, str(store.folder)))


def test_two_concurrent_preparers_produce_one_valid_store(tmp_path: Path) -> None:
    root = _photos(tmp_path / "data", per_class=60)
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_prepare, args=(str(root), str(cache), barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(built for built, _ in outcomes) == [False, True]  # one decoded, the other waited and read it
    assert len({folder for _, folder in outcomes}) == 1
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [Path(outcomes[0][1]).name]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    reopened = _store_of(root, cache, image_size=24)
    assert not reopened.built  # the one store verifies


@pytest.mark.parametrize("damage", ["truncate", "flip-bytes", "manifest", "stats"])
def test_a_damaged_store_is_rebuilt_never_read(tmp_path: Path, damage: str) -> None:
    root, cache = _photos(tmp_path / "data"), tmp_path / "cache"
    good = _store_of(root, cache)
    expected = good.pixel_file.read_bytes()
    if damage == "truncate":
        os.truncate(good.pixel_file, good.nbytes - 7)
    elif damage == "flip-bytes":
        with open(good.pixel_file, "r+b") as f:
            f.write(bytes(255 - b for b in expected[:32]))
    elif damage == "manifest":
        (good.folder / "manifest.json").write_text("{not json")
    else:
        (good.folder / "stats.npy").unlink()
    rebuilt = _store_of(root, cache)
    assert rebuilt.built and rebuilt.folder == good.folder
    assert rebuilt.pixel_file.read_bytes() == expected


def test_a_changed_source_file_makes_the_store_stale(tmp_path: Path) -> None:
    root, cache = _photos(tmp_path / "data"), tmp_path / "cache"
    first = _store_of(root, cache)
    photo = root / "train" / "c0" / "0.jpg"
    Image.fromarray(np.full((30, 40, 3), 7, dtype=np.uint8)).save(photo)
    os.utime(photo, ns=(1, 1))
    second = _store_of(root, cache)
    assert second.built and second.folder != first.folder
    assert int(np.fromfile(second.pixel_file, dtype=np.uint8, count=16).max()) < 20  # the new pixels


def test_the_cache_evicts_the_least_recently_used_store(tmp_path: Path) -> None:
    root, cache = _photos(tmp_path / "data"), tmp_path / "cache"
    a = _store_of(root, cache, image_size=16)
    b = _store_of(root, cache, image_size=20)
    _store_of(root, cache, image_size=16)  # a is now the more recently used
    per_store = a.nbytes + 2048  # pixels plus the small manifest and stats
    c = _store_of(root, cache, image_size=12, capacity=per_store + _pixel_bytes(a, 12))
    names = {p.name for p in cache.iterdir() if not p.name.startswith(".")}
    assert names == {a.folder.name, c.folder.name} and b.folder.name not in names
    assert evict(cache, 0, keep=c.folder.name) == [a.folder.name]


def _pixel_bytes(store, size: int) -> int:
    return store.count * 3 * size * size


@pytest.mark.parametrize("recipe", ["none", "crop-flip", "random-resized-crop"])
def test_the_same_spec_trains_bit_identically_with_the_set_in_ram_and_on_disk(tmp_path: Path, recipe: str) -> None:
    spec = DatasetSpec(path=str(_photos(tmp_path / "data", per_class=10)), image_size=16, augment=recipe)
    in_ram, on_disk = load_dataset(spec, seed=0), load_dataset(spec, seed=0, memory_budget=0)
    assert (in_ram.train.placement, on_disk.train.placement) == ("memory", "disk")
    weights = []
    for data in (in_ram, on_disk):
        torch.manual_seed(0)
        model = build_model("cnn", data.num_classes, data.in_channels)
        objective = DistillationObjective(model, cross_entropy_only(), data, torch.device("cpu"))
        config = OptimConfig(epochs=2, batch_size=8, lr=0.05, seed=3)
        train(model, objective, data.train, None, config, stage="training_teacher", device=torch.device("cpu"),
              augment=spec.augment)
        objective.close()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_split_on_disk_is_evaluated_a_slice_at_a_time(tmp_path: Path) -> None:
    spec = DatasetSpec(path=str(_photos(tmp_path / "data")), image_size=16)
    in_ram, on_disk = load_dataset(spec, seed=0), load_dataset(spec, seed=0, memory_budget=0)
    lazy = on_disk.test_x
    assert not isinstance(lazy, torch.Tensor) and lazy.shape == in_ram.test_x.shape
    assert torch.equal(lazy[2:7], in_ram.test_x[2:7])


def test_recipes_keep_shape_and_are_reproducible() -> None:
    assert resolve_recipe(True, 32) == "crop-flip" and resolve_recipe(True, 224) == "random-resized-crop"
    assert resolve_recipe(False, 224) == "none"
    x = torch.randn(6, 3, 32, 32)
    for recipe in ("crop-flip", "random-resized-crop"):
        one = apply_recipe(x, recipe, torch.Generator().manual_seed(1))
        two = apply_recipe(x, recipe, torch.Generator().manual_seed(1))
        assert one.shape == x.shape and torch.equal(one, two) and not torch.equal(one, x)
    boxes = crop_boxes(500, 32, 24, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 24).all() and (boxes[:, 3] <= 32).all())
    assert bool(((w * h) >= 0.07 * 32 * 24).all()) and float((w * h).mean()) < 0.8 * 32 * 24


def test_parallel_decoding_writes_the_same_store_as_one_process(tmp_path: Path) -> None:
    root = _photos(tmp_path / "data", per_class=150)
    serial = _store_of(root, tmp_path / "one", workers=0)
    parallel = _store_of(root, tmp_path / "two", workers=2)
    assert serial.count == 300 and parallel.pixel_file.read_bytes() == serial.pixel_file.read_bytes()
    assert np.array_equal(parallel.stats(), serial.stats())


@pytest.mark.parametrize("method", ["e2kd", "xdistill"])
def test_a_whole_run_with_the_set_on_disk_matches_the_run_with_it_in_ram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    from core.run import run_distillation
    from core.spec import JobSpec

    data = _photos(tmp_path / "data", per_class=10)
    spec = JobSpec.model_validate({
        "name": "on-disk", "dataset": {"path": str(data), "image_size": 16},
        "teacher": {"arch": "cnn", "epochs": 1}, "student": {"arch": "cnn"}, "method": method,
        "training": {"epochs": 1, "batch_size": 8, "lr": 0.05, "seed": 0},
        "report": {"heatmaps": 2, "latency_runs": 1}, "export": {"onnx": method == "e2kd"},
    })
    results = {}
    for budget in ("2048", "0"):
        monkeypatch.setenv("DISTILL_DATA_MEMORY_MB", budget)
        results[budget] = run_distillation(spec, tmp_path / f"out-{budget}")
    for key in ("student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine"):
        assert results["0"][key] == results["2048"][key], key
    assert results["0"]["history"]["student"][-1]["loss"] == results["2048"]["history"]["student"][-1]["loss"]


def test_a_set_on_disk_stays_readable_when_the_cache_evicts_its_store(tmp_path: Path) -> None:
    root, cache = _photos(tmp_path / "data"), tmp_path / "cache"
    store = _store_of(root, cache)
    on_disk = StoreImages(store, np.arange(store.count), [0.5] * 3, [0.25] * 3, "disk")
    before = on_disk.uint8(slice(None)).clone()
    assert evict(cache, 0, keep="") == [store.folder.name] and not store.folder.exists()
    assert torch.equal(on_disk.uint8(slice(None)), before)  # the open file outlives its folder


def test_an_undecodable_image_fails_the_parallel_first_pass_as_a_data_error_and_leaves_no_store(
    tmp_path: Path,
) -> None:
    from core.errors import DataError

    root, cache = _photos(tmp_path / "data", per_class=150), tmp_path / "cache"
    (root / "train" / "c1" / "77.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode image c1/77.jpg"):
        _store_of(root, cache, workers=2)
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
