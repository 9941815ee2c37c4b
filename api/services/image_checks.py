"""Checking an unpacked ImageFolder tree at a bounded cost per image, and reading it as a worker will.

Each image's header is read first: one over the pixel limit (DISTILL_MAX_IMAGE_PIXELS) is
refused, naming the member, before anything is decoded. Then the image is decoded once,
JPEGs in draft mode (the decoder scales by up to 1/8 while it reads, so a 10000 x 10000
photo costs a 1250 x 1250 decode), which still reads every byte and so finds a truncated
or corrupt file. The structure (classes, splits, labels) is then read with core.data's own
listing and split rules, so a job never meets a tree the upload accepted; it decodes nothing.
"""

from __future__ import annotations

from pathlib import Path

from core.data import find_splits, image_folder_classes
from core.data.sources import IMAGE_SUFFIXES, image_folder
from core.data.splits import check_classes, random_split
from core.errors import DataError
from core.models.compat import image_channels
from core.redact import exception_text
from core.spec import DatasetSpec

# JPEG draft target: the decoder keeps at least this many pixels a side (jobs train far smaller).
DRAFT_PIXELS = 256


def _invalid(message: str) -> DataError:
    return DataError(message, "file")


def set_pixel_guard(max_pixels: int) -> None:
    """PIL's decompression-bomb guard, set deliberately to the service's own limit (a checking process
    calls this once: it is process-wide). Past twice the limit PIL refuses to open the file at all."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels


def check_image(file: Path, where: str, max_pixels: int) -> int:
    """Decode one image at a bounded cost; its channel count. `where` is the member name the client sent."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _invalid(f"image {where} is {width} x {height} pixels, over the limit of {max_pixels} pixels")
            channels = image_channels(img.mode)
            img.draft(None, (DRAFT_PIXELS, DRAFT_PIXELS))  # JPEG only; other formats ignore it
            img.load()
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise _invalid(f"image {where} cannot be decoded: {exception_text(exc, {file.parent: ''})}") from exc
    return channels


def check_image_tree(root: Path, max_pixels: int) -> tuple[list[str], int, int, int, str | None]:
    """(class_names, in_channels, num_train, num_test, held-out folder name) once every image decoded."""
    train_root, test_root = find_splits(root)
    class_names = image_folder_classes(train_root)
    if len(class_names) < 2:
        raise _invalid(f"an ImageFolder tree needs at least 2 class folders under train/, found {len(class_names)}")
    channels: list[int] = []
    num_train = _check_split(train_root, class_names, channels, max_pixels, require_every_class=True)
    num_test = 0
    if test_root is not None:
        unknown = sorted(set(image_folder_classes(test_root)) - set(class_names))
        if unknown:
            raise _invalid(f"{test_root.name}/ has classes that train/ lacks: {', '.join(unknown)}")
        num_test = _check_split(test_root, class_names, channels, max_pixels, require_every_class=False)
    _read_as_worker(root)
    return class_names, (channels[0] if channels else 3), num_train, num_test, test_root.name if test_root else None


def _check_split(split_root: Path, class_names: list[str], channels: list[int], max_pixels: int,
                 require_every_class: bool) -> int:
    """Check every image of one split; the first image's mode gives the channel count."""
    count = 0
    for name in class_names:
        folder = split_root / name
        images = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if require_every_class and not images:
            raise _invalid(f"class folder '{split_root.name}/{name}' has no images")
        for file in images:
            found = check_image(file, f"{split_root.name}/{name}/{file.name}", max_pixels)
            if not channels:
                channels.append(found)
            count += 1
    return count


def _read_as_worker(root: Path) -> None:
    """core.data's listing, held-out split and class checks on the tree, without decoding (done above)."""
    try:
        source = image_folder(root)
        train_labels, test_labels = source.labels, source.test_labels
        if test_labels is None:
            train_idx, test_idx = random_split(source.labels, DatasetSpec.model_fields["test_fraction"].default, 0)
            train_labels, test_labels = source.labels[train_idx], source.labels[test_idx]
        check_classes(train_labels, test_labels, len(source.class_names))
    except DataError as exc:
        raise _invalid(exception_text(exc, {root: ""})) from exc
