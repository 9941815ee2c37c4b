"""An exported teacher (torch.export .pt2, unflattened) vs the same network built from the zoo: per-batch cost.

    python bench/exported_teacher.py --arch resnet20 --batch-size 64 --repeats 30 --threads 2

The zoo model and its `torch.export` program (exported with a dynamic batch, loaded by
core.models.exported as a job loads it) run the same batches, interleaved (zoo, program,
zoo, program...), so noise from a shared machine hits both alike. Two costs per batch:
the teacher forward under no_grad (KD's teacher logits) and Grad-CAM in the training form
(one forward with the explained layer tapped, one gradient: what an e2kd step spends on the
teacher when its maps are not cached). The maps of both are checked equal first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import torch

from core.explain import FeatureTap, gradcam_maps
from core.models import build_model, explained_layer, explained_layer_path
from core.models.exported import load_exported


def _forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - started


def _gradcam(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    tap = FeatureTap(explained_layer(model))
    maps = gradcam_maps(model(x), tap.take(), target)
    tap.remove()
    return time.perf_counter() - started, maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    common.setup_logging()
    common.set_threads(args.threads)

    torch.manual_seed(0)
    zoo = build_model(args.arch, 10, 3).eval()
    example = torch.randn(2, 3, args.image_size, args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "teacher.pt2"
        program = torch.export.export(zoo, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(program, str(path))
        exported = load_exported(path)
    for parameter in zoo.parameters():  # a job's teacher is frozen either way
        parameter.requires_grad_(False)
    assert explained_layer_path(exported) == explained_layer_path(zoo)

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    target = torch.randint(0, 10, (args.batch_size,))
    inputs = x.clone().requires_grad_()
    torch.testing.assert_close(_gradcam(exported, inputs, target)[1], _gradcam(zoo, inputs, target)[1],
                               atol=1e-5, rtol=1e-4)
    times: dict[tuple[str, str], list[float]] = {(k, m): [] for k in ("forward", "gradcam") for m in ("zoo", "pt2")}
    for _ in range(3):  # warm-up
        _forward(zoo, x), _forward(exported, x), _gradcam(zoo, inputs, target), _gradcam(exported, inputs, target)
    for _ in range(args.repeats):
        for name, model in (("zoo", zoo), ("pt2", exported)):
            times[("forward", name)].append(_forward(model, x))
            times[("gradcam", name)].append(_gradcam(model, inputs, target)[0])

    rows = []
    for kind in ("forward", "gradcam"):
        zoo_ms, pt2_ms = (1000 * common.median(times[(kind, m)]) for m in ("zoo", "pt2"))
        rows.append([f"teacher {kind} ({'no_grad' if kind == 'forward' else 'training form'})",
                     f"{zoo_ms:.2f}", f"{pt2_ms:.2f}", f"{pt2_ms / zoo_ms:.3f}x"])
    headers = [f"{args.arch}, batch {args.batch_size}, {args.image_size} px, {args.threads} threads",
               "zoo ms/batch (median)", "exported ms/batch (median)", "exported / zoo"]
    common.write_results(
        "exported_teacher", "Exported (.pt2) teacher vs the same zoo model, per batch", vars(args),
        [("Interleaved in one process: noise from the shared cores hits both columns alike", headers, rows)],
        {f"{kind}_{model}_s": values for (kind, model), values in times.items()},
    )


if __name__ == "__main__":
    main()
