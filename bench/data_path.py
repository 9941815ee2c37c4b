"""Data path: images/s of each way a training split reaches the device, side by side in one run; peak memory.

    python bench/data_path.py                 # 10,000 CIFAR JPEGs at 32 px + 2,000 generated photos at 224 px
    python bench/data_path.py --quick         # smoke test: 1,000 + 200 images

Rows, per image set (each in a fresh process, so its peak memory is its own; no model, batches
of 64 moved to the CPU device and normalised, no augmentation unless the row says so):

- streamed: today's streamed path (core.data.StreamImages, one DataLoader decoding worker);
- reference: a plain loader (PIL `draft` + resize + center crop, uint8 to the main process via one
  DataLoader worker, normalised per batch);
- prepare: the first pass into the image store (core.data.store.open_or_build), one decoding worker;
- store epoch: a later epoch read from the store on disk (memory-mapped, one gather per batch);
- in memory: the same store held in RAM (the in-memory placement);
  (store rows: one warm-up epoch, then the median of 3 timed epochs)
- interleaved: disk and in-memory epochs of the same store alternating in one process, 5 pairs;
  the median ratio (the side-by-side answer to "do later epochs run at in-memory speed");
- store at 1x / 10x the budget: a disk epoch over a subset whose pixels are 1x, then 10x, a memory
  budget of a tenth of the set: peak memory must stay flat.

Peak memory is PSS of the process and its children, sampled every 50 ms. All rows run on the same
machine in one invocation, one after the other, so load on the shared cores affects them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

PHOTO_DIR = common.CACHE_DIR / "photos-500x375"
STORE_DIR = common.CACHE_DIR / "image-store-bench"
PAIRS = 5  # alternating (disk, in memory) epoch pairs of the interleaved store / in-memory ratio
EPOCHS = 3  # timed epochs of the rows that read a store (after one warm-up epoch)
ROWS = ("streamed", "reference", "prepare", "store epoch", "in memory", "store epoch, random-resized-crop",
        "store at 1x budget", "store at 10x budget")


def photo_files(count: int) -> tuple[list[Path], list[int]]:
    """`count` generated 500x375 JPEG photos in 10 classes (made once into bench/.cache): smooth colour fields
    plus noise, so they decode like photos rather than flat colour."""
    import numpy as np
    from PIL import Image

    per_class = max(1, count // 10)
    files, labels = [], []
    rng = np.random.default_rng(0)
    for label in range(10):
        folder = PHOTO_DIR / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i:05d}.jpg"
            if not path.exists():
                coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
                smooth = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), dtype=np.int16)
                noisy = np.clip(smooth + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(path, quality=90)
            files.append(path)
            labels.append(label)
    return files, labels


def image_set(name: str, args: argparse.Namespace) -> tuple[list[Path], list[int], int]:
    if name == "cifar32":
        from engine_speed import cifar_files

        files, labels = cifar_files(args.cifar_images)
        return files, labels, 32
    files, labels = photo_files(args.photos)
    return files, labels, 224


class _Reference:
    """The plain reference loader's dataset: PIL draft + resize by the shorter side + center crop, uint8."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):  # noqa: ANN204 - a uint8 tensor
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.files[index]) as img:
            img.draft("RGB", (self.size, self.size))
            img = img.convert("RGB")
            w, h = img.size
            scale = self.size / min(w, h)
            img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
            left, top = (img.size[0] - self.size) // 2, (img.size[1] - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def _epoch(  # noqa: ANN001 - images: any ImageSet
    images, args: argparse.Namespace, augment: bool | str = False, count: int | None = None
) -> int:
    import torch

    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    seen = 0
    for x, _y, _index in images.batches(order, args.batch_size, torch.device("cpu"), augment,
                                        torch.Generator().manual_seed(0)):
        seen += len(x)
    return seen


def measure(row: str, set_name: str, args: argparse.Namespace) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, images) of the row's timed pass."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from core.data import StoreImages, StreamImages, normalise, open_or_build

    files, labels, size = image_set(set_name, args)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    label_array = np.asarray(labels, dtype=np.int64)
    if row == "streamed":
        images = StreamImages(files, torch.from_numpy(label_array), "RGB", size, mean, std, workers=args.workers)
        return _timed(lambda: _epoch(images, args))
    if row == "reference":
        loader = DataLoader(_Reference(files, size), batch_size=args.batch_size, shuffle=True, num_workers=args.workers)

        def run() -> int:
            seen = 0
            for batch in loader:
                seen += len(normalise(batch, mean, std))
            return seen
        return _timed(run)
    if row == "prepare":
        shutil.rmtree(STORE_DIR / set_name, ignore_errors=True)
        return _timed(lambda: open_or_build(files, label_array, "RGB", size, root=STORE_DIR / set_name,
                                            workers=args.workers).count)
    store = open_or_build(files, label_array, "RGB", size, root=STORE_DIR / set_name, workers=args.workers)
    assert not store.built, "the prepare row builds the store first"
    rows = np.arange(store.count)
    if row in ("store at 1x budget", "store at 10x budget"):
        budget_images = max(args.batch_size, store.count // 10)
        rows = rows[: budget_images * (1 if row.endswith("1x budget") else 10)]
    placement = "memory" if row == "in memory" else "disk"
    images = StoreImages(store, rows, mean, std, placement)
    augment = "random-resized-crop" if row.endswith("random-resized-crop") else False
    _epoch(images, args, augment)  # warm-up: the later epochs are what this row is about
    times = sorted(_timed(lambda: _epoch(images, args, augment)) for _ in range(EPOCHS))
    return times[len(times) // 2]  # the median epoch: a fast row's single epoch is mostly noise


def interleaved_ratio(set_name: str, args: argparse.Namespace) -> float:
    """Median over PAIRS of (in-memory epoch seconds / disk epoch seconds), the two placements of the same store
    alternating in one process: the side-by-side ratio, free of the drift between separate rows."""
    import numpy as np

    from core.data import StoreImages, open_or_build

    files, labels, size = image_set(set_name, args)
    store = open_or_build(files, np.asarray(labels, dtype=np.int64), "RGB", size, root=STORE_DIR / set_name)
    rows, stats = np.arange(store.count), ([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    disk, memory = StoreImages(store, rows, *stats, "disk"), StoreImages(store, rows, *stats, "memory")
    _epoch(disk, args), _epoch(memory, args)
    ratios = []
    for pair in range(PAIRS):
        sides = (disk, memory) if pair % 2 == 0 else (memory, disk)
        seconds = {images.placement: _timed(lambda images=images: _epoch(images, args))[0] for images in sides}
        ratios.append(seconds["memory"] / seconds["disk"])
    return sorted(ratios)[len(ratios) // 2]


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children that have ended (DataLoader, decoders)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(run) -> tuple[float, float, int]:  # noqa: ANN001
    """(wall seconds, CPU seconds, images) of one pass."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    count = run()
    return time.perf_counter() - started, _cpu_seconds() - cpu, count


def child(args: argparse.Namespace) -> None:
    from engine_speed import RssSampler

    common.set_threads(args.threads)
    if args.row == "interleaved":
        print(json.dumps({"row": "interleaved", "set": args.set, "ratio": interleaved_ratio(args.set, args)}))
        return
    with RssSampler() as sampler:
        seconds, cpu, count = measure(args.row, args.set, args)
    import resource

    print(json.dumps({"row": args.row, "set": args.set, "seconds": seconds, "cpu_seconds": cpu, "images": count,
                      "images_per_s": count / seconds, "images_per_cpu_s": count / max(cpu, 1e-9),
                      "peak_pss_mb": sampler.peak_kib / 1024,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_row(row: str, set_name: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--row", row, "--set", set_name, "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--cifar-images", str(args.cifar_images), "--photos", str(args.photos)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=common.REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{set_name} / {row} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if row == "interleaved":
        common.log.info("%-8s store / in memory, interleaved epochs: %.2fx", set_name, result["ratio"])
        return result
    common.log.info("%-8s %-34s %9.0f img/s %9.0f img/CPU-s  peak PSS %5.0f MB", set_name, row,
                    result["images_per_s"], result["images_per_cpu_s"], result["peak_pss_mb"])
    return result


def table(args: argparse.Namespace) -> None:
    if not (common.CIFAR_TREE / "train").is_dir():
        raise SystemExit("extract cifar10-jpeg.tar.gz into var/datasets/ first (see bench/README.md)")
    photo_files(args.photos)  # generated once, outside the timed rows
    sets = {"cifar32": f"{args.cifar_images:,} CIFAR JPEGs at 32 px", "photos224": f"{args.photos:,} photos "
            "500x375 -> 224 px"}
    results = {name: {row: run_row(row, name, args) for row in (*ROWS, "interleaved")} for name in sets}
    headers = ["images", *ROWS, "prepare / reference", "store / in memory", "store / in memory, interleaved"]
    rows, cpu_rows, memory, flat = [], [], [], []
    for name, label in sets.items():
        r = results[name]
        for key, out in (("images_per_s", rows), ("images_per_cpu_s", cpu_rows)):
            speed = lambda row, key=key: r[row][key]  # noqa: E731
            out.append([label, *(f"{speed(row):,.0f}" for row in ROWS),
                        f"{speed('prepare') / speed('reference'):.2f}x",
                        f"{speed('store epoch') / speed('in memory'):.2f}x", f"{r['interleaved']['ratio']:.2f}x"])
        memory.append([label, *(f"{r[row]['peak_pss_mb']:.0f}" for row in ROWS)])
        flat.append([label, *(f"{r[row]['peak_rss_mb']:.0f}" for row in ROWS),
                     f"{r['store at 10x budget']['peak_rss_mb'] / r['store at 1x budget']['peak_rss_mb']:.2f}x"])
    common.write_results(
        "data_path", "Data path: images/s of each way a split reaches the device (one run, side by side)",
        {"batch_size": args.batch_size, "decoding_workers": args.workers, "torch_threads": args.threads,
         "device": "cpu"},
        [("Images per second, wall clock (higher is better); ratios measured in this one run", headers, rows),
         ("Images per CPU-second of the row's process and its workers (robust to load on the shared cores)",
          headers, cpu_rows),
         ("Peak PSS MB of each row's process and its workers (sampled every 50 ms)", ["images", *ROWS], memory),
         ("Peak RSS MB of each row's main process (the kernel's high-water mark: store rows have no workers, "
          "and shared pages do not move it as other processes come and go)", ["images", *ROWS, "RSS 10x / 1x"],
          flat)],
        {"results": results},
        notes=["Targets: prepare >= the reference loader; a store epoch >= 0.9x in memory; peak memory flat "
               "(within 10 %) from a set of 1x to 10x the memory budget.",
               "A store epoch gathers each batch from the memory-mapped store file and lets go of the pages it "
               "touched every 32 MB (they stay in the OS page cache, so later epochs read at memory speed, as on "
               "a worker with free memory, but stop counting in the process's memory).",
               "All rows share the same two cores with other work: absolute numbers move with the load, ratios "
               "within one run much less."],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 CIFAR images and 200 photos")
    parser.add_argument("--cifar-images", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes of every decoding row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--set", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.cifar_images, args.photos = 1_000, 200
    common.setup_logging()
    if args.row:
        child(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
