"""A GPU check anyone can run: real-size distillation jobs on every GPU of this machine, one table.

On CUDA (the real size): a torchvision resnet50 teacher -> mobilenet_v3_small student at 224 px
on generated photos (a few thousand), kd and e2kd, fp32 vs bf16 (bf16 runs channels_last, the
engine's choice on CUDA), on 1 GPU vs all GPUs (DDP, `training.devices`). Per row: images/s of
the distilling stage, peak GPU memory and mean GPU utilisation (nvidia-smi, sampled every 0.2 s
over every process, so the DDP ranks are counted too).

On a CPU-only machine the same code runs at toy size (cnn -> resnet8 at 16 px, 64 images, one
epoch, 1 vs 2 gloo ranks) in about a minute and says so; the test suite runs it in that form.

    python bench/gpu.py                 # CUDA: the real table; CPU: the toy run
    python bench/gpu.py --toy           # the toy run anywhere
    python bench/gpu.py --cpu-ranks     # bench/README: 2 gloo ranks x 1 thread vs 1 process x 1 thread

The teacher is given as (seeded, untrained) weights: the check times the student stage, where
the multi-GPU work is, not a teacher's training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import setup_logging, write_results  # noqa: E402


@dataclass(frozen=True)
class Size:
    """One scale of the check: models, image side, images, epochs, batch."""

    name: str
    teacher: str
    student: str
    image_size: int
    images: int
    epochs: int
    batch_size: int
    classes: int = 10


REAL = Size("real", "torchvision/resnet50", "mobilenet_v3_small", 224, 4096, 2, 128)
TOY = Size("toy", "cnn", "resnet8", 16, 64, 1, 16)
CPU_RANKS = Size("cpu-ranks", "resnet20", "resnet8", 32, 2048, 2, 64)


def generated_photos(size: Size, path: Path, seed: int = 0) -> Path:
    """An .npz of photo-like uint8 images (smooth colour fields with a class-dependent blob), and a test split."""
    rng = np.random.default_rng(seed)
    total = size.images + max(size.images // 8, size.classes)
    labels = np.arange(total) % size.classes
    side = size.image_size
    coarse = rng.integers(0, 256, (total, 3, 4, 4)).astype(np.float32)
    images = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(side, side), mode="bilinear").numpy()
    grid = np.linspace(-1, 1, side, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    for index, label in enumerate(labels):
        angle = 2 * np.pi * label / size.classes
        blob = np.exp(-((xx - 0.5 * np.cos(angle)) ** 2 + (yy - 0.5 * np.sin(angle)) ** 2) / 0.05)
        images[index, label % 3] += 120 * blob
    pixels = np.clip(images, 0, 255).astype(np.uint8)
    split = size.images
    np.savez(path, x=pixels[:split], y=labels[:split], x_test=pixels[split:], y_test=labels[split:])
    return path


def teacher_weights(size: Size, path: Path) -> Path:
    from core.models import build_model, save_weights

    torch.manual_seed(0)
    save_weights(build_model(size.teacher, size.classes, 3, image_size=size.image_size), path)
    return path


class GpuSampler(threading.Thread):
    """nvidia-smi every 0.2 s: the peak memory used and the mean utilisation over all GPUs while a job runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_event, self.memory_mib, self.utilisation = threading.Event(), 0.0, []  # type: ignore[var-annotated]
        self.available = torch.cuda.is_available() and shutil.which("nvidia-smi") is not None

    def run(self) -> None:
        while self.available and not self.stop_event.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            rows = [[float(v) for v in line.split(",")] for line in out.strip().splitlines() if line.strip()]
            if rows:
                self.utilisation.append(sum(r[0] for r in rows) / len(rows))
                self.memory_mib = max(self.memory_mib, max(r[1] for r in rows))

    def finish(self) -> tuple[float | None, float | None]:
        self.stop_event.set()
        self.join(timeout=5)
        if not self.available:
            return None, None
        return self.memory_mib, (sum(self.utilisation) / len(self.utilisation) if self.utilisation else None)


def one_job(size: Size, data: Path, teacher: Path, method: str, precision: str, devices: int, work: Path) -> dict[str, Any]:
    """One distillation job; the distilling stage's images/s and s/epoch, GPU memory and utilisation."""
    from core.run import run_distillation
    from core.spec import JobSpec

    spec = JobSpec.model_validate({
        "name": f"gpu-check-{method}-{precision}-{devices}",
        "dataset": {"path": str(data), "image_size": size.image_size},
        "teacher": {"arch": size.teacher, "weights": str(teacher)},
        "student": {"arch": size.student},
        "method": method,
        "training": {"epochs": size.epochs, "batch_size": size.batch_size, "precision": precision,
                     "devices": devices, "lr": 0.01},
        "report": {"heatmaps": 0, "latency_runs": 1},
        "export": {"onnx": False},
    })
    out = work / spec.name
    shutil.rmtree(out, ignore_errors=True)
    sampler = GpuSampler()
    sampler.start()
    result = run_distillation(spec, out)
    memory, utilisation = sampler.finish()
    seconds = [entry["seconds"] for entry in result["history"]["student"] if "seconds" in entry]  # not epoch 0
    return {"method": method, "precision": precision, "devices": devices, "seconds_per_epoch": seconds,
            "images_per_s": size.images * len(seconds) / sum(seconds), "peak_gpu_mib": memory,
            "gpu_utilisation": utilisation, "device": result["device_info"]}


def run_check(size: Size, methods: list[str], precisions: list[str], device_counts: list[int]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="distill-gpu-check-") as folder:
        work = Path(folder)
        data = generated_photos(size, work / "photos.npz")
        teacher = teacher_weights(size, work / "teacher.safetensors")
        return [one_job(size, data, teacher, method, precision, devices, work)
                for method in methods for precision in precisions for devices in device_counts]


def _rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    base = {(r["method"], r["precision"]): r["seconds_per_epoch"] for r in results if r["devices"] == 1}
    rows = []
    for r in results:
        one = base.get((r["method"], r["precision"]))
        ratio = (sum(r["seconds_per_epoch"]) / sum(one)) if one else None
        rows.append([r["method"], r["precision"], r["devices"], round(sum(r["seconds_per_epoch"]) / len(r["seconds_per_epoch"]), 2),
                     round(r["images_per_s"], 1), None if ratio is None else round(ratio, 3),
                     r["peak_gpu_mib"], None if r["gpu_utilisation"] is None else round(r["gpu_utilisation"], 1)])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="the toy size, even on CUDA")
    parser.add_argument("--cpu-ranks", action="store_true", help="CPU: 1 process x 1 thread vs 2 gloo ranks x 1 thread")
    args = parser.parse_args(argv)
    setup_logging()
    cuda = torch.cuda.is_available()
    if args.cpu_ranks:
        size, precisions, counts, note = CPU_RANKS, ["fp32"], [1, 2], "CPU, gloo ranks, DISTILL_TORCH_THREADS=1"
        os.environ["DISTILL_TORCH_THREADS"] = "1"
        torch.set_num_threads(1)
    elif cuda and not args.toy:
        size, precisions, counts = REAL, ["fp32", "bf16"], sorted({1, torch.cuda.device_count()})
        note = f"CUDA, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        size, precisions, counts = TOY, ["fp32"], [1, 2]
        note = "no CUDA device: the toy size on the CPU (gloo ranks), a check of the code path, not a GPU measurement"
        os.environ.setdefault("DISTILL_TORCH_THREADS", "1")
        torch.set_num_threads(1)
    print(f"gpu check: {size.name} size ({note})", flush=True)
    started = time.perf_counter()
    results = run_check(size, ["kd", "e2kd"], precisions, counts)
    headers = ["method", "precision", "devices", "s/epoch", "images/s", "x vs 1 device", "peak GPU MiB", "GPU util %"]
    write_results(
        f"gpu_{size.name}", f"GPU check ({size.name} size)", {"size": size.name, "note": note, "teacher": size.teacher,
                                                               "student": size.student, "images": size.images},
        [(f"{size.teacher} -> {size.student}, {size.image_size} px, {size.images} generated images, "
          f"{size.epochs} epoch(s), global batch {size.batch_size}", headers, _rows(results))],
        {"results": results}, notes=[note, f"total {time.perf_counter() - started:.0f} s"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
