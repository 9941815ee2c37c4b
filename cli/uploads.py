"""Client verbs for uploads: upload-model (teacher weights) and upload-dataset (ImageFolder zip or npz)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from cli.connection import EXIT_OK, add_verb
from cli.render import size
from client import ClientError, DistillClient

# Files smaller than this upload without a bar: it would flash for a fraction of a second.
BAR_FROM_BYTES = 8 << 20


def register(commands: argparse._SubParsersAction) -> None:
    model = add_verb(commands, "upload-model", _upload_model,
                     "upload teacher weights (.safetensors, a .pt/.pth state dict read weights-only, or a "
                     "torch.export .pt2 program)")
    model.add_argument("file", type=Path, help="the .safetensors, .pt, .pth or .pt2 file")
    model.add_argument("--arch", default=None,
                       help="architecture the weights belong to: timm/<name>, torchvision/<name> or e.g. resnet20 "
                       "(not for a .pt2 program, which is its own architecture)")
    model.add_argument("--num-classes", type=int, default=None,
                       help="classes of the classifier head (default: read from the weights)")
    model.add_argument("--in-channels", type=int, default=None,
                       help="input channels, 1 grey or 3 RGB (default: read from the weights)")
    model.add_argument("--name", default=None, help="label (default: the file name)")

    dataset = add_verb(commands, "upload-dataset", _upload_dataset,
                       "upload a dataset: a .zip of an ImageFolder tree (train/<class>/... and val|valid|validation|"
                       "test/<class>/...) or a .npz")
    dataset.add_argument("file", type=Path, help="the .zip or .npz")
    dataset.add_argument("--name", default=None, help="label (default: the file name)")


def _bar(path: Path) -> tqdm:
    try:
        total = path.stat().st_size
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"upload {path.name}",
                file=sys.stderr, disable=total < BAR_FROM_BYTES)


def _upload_model(args: argparse.Namespace, client: DistillClient) -> int:
    with _bar(args.file) as bar:
        model = client.upload_model(args.file, args.arch, args.num_classes, args.in_channels, args.name,
                                    on_bytes=bar.update)
    print(f"model {model.id}: {model.arch}, {model.num_classes} classes, {model.in_channels} channel(s), "
          f"{size(model.size_bytes)}", file=sys.stderr)
    print(model.id)
    return EXIT_OK


def _upload_dataset(args: argparse.Namespace, client: DistillClient) -> int:
    with _bar(args.file) as bar:
        dataset = client.upload_dataset(args.file, args.name, on_bytes=bar.update)
    print(f"dataset {dataset.id}: {dataset.kind}, {dataset.num_classes} classes, {dataset.num_train} train / "
          f"{dataset.num_test} test images ({dataset.test_split or 'random held-out share'}), "
          f"{dataset.in_channels} channel(s)", file=sys.stderr)
    print(dataset.id)
    return EXIT_OK
