"""Datasets as in-memory tensors.

Every source (scikit-learn digits, an ImageFolder tree, an .npz) ends as one
`DataBundle` of normalised float tensors. The data sets this service targets are
small (CIFAR-10 is 600 MB as float32), and batching by index slices instead of a
DataLoader keeps the per-step overhead near zero on the CPU and gives each
sample a stable index, which the teacher-map cache keys on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import DataError
from core.spec import DatasetSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class DataBundle:
    train_x: torch.Tensor  # (N, C, H, W) float32, normalised with mean/std
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    mean: list[float]  # per channel, to undo normalisation for display
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixels, for heatmap backgrounds."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def load_dataset(spec: DatasetSpec, seed: int | None = None, named: Mapping[str, Path] | None = None) -> DataBundle:
    """Resolve the spec's source, split, subsample (shots_per_class) and normalise.

    `seed` overrides `spec.split_seed` (tests use it to compare splits).

    `named` maps operator-registered names to paths; `digits` is always known.
    `spec.id` must have been resolved to `spec.path` by the host before this call.
    """
    named = dict(named or {})
    seed = spec.split_seed if seed is None else seed
    if spec.name == "digits":
        train_x, train_y, test_x, test_y, names = _digits()
    else:
        if spec.name is not None:
            if spec.name not in named:
                known = ", ".join(sorted({"digits", *named}))
                raise DataError(f"unknown dataset '{spec.name}'; known: {known}", field="dataset.name")
            path = Path(named[spec.name])
        elif spec.path is not None:
            path = Path(spec.path)
        else:
            raise DataError("dataset id was not resolved to a path", field="dataset.id")
        train_x, train_y, test_x, test_y, names = _read_path(path, spec.image_size)

    if test_x is None:
        train_x, train_y, test_x, test_y = _split(train_x, train_y, spec.test_fraction, seed)
    if spec.shots_per_class is not None:
        train_x, train_y = _few_shot(train_x, train_y, spec.shots_per_class, seed)
    _check_classes(train_y, test_y, len(names))

    train = _resize(torch.from_numpy(train_x), spec.image_size)
    test = _resize(torch.from_numpy(test_x), spec.image_size)
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-3)
    norm = lambda t: (t - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)  # noqa: E731
    log.info("dataset ready: %d train, %d test, %d classes, %s", len(train), len(test), len(names), tuple(train.shape[1:]))
    return DataBundle(
        train_x=norm(train).contiguous(),
        train_y=torch.from_numpy(train_y).long(),
        test_x=norm(test).contiguous(),
        test_y=torch.from_numpy(test_y).long(),
        class_names=names,
        mean=mean.tolist(),
        std=std.tolist(),
    )


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per sample, on a normalised batch."""
    n, _, h, w = x.shape
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


# --- sources ---------------------------------------------------------------------------------------------

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]


def _digits() -> Arrays:
    """scikit-learn's 8x8 digits (ships with the package: no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    return x, digits.target.astype(np.int64), None, None, [str(i) for i in range(10)]


def _read_path(path: Path, image_size: int) -> Arrays:
    if not path.exists():
        raise DataError(f"dataset path does not exist: {path}", field="dataset.path")
    if path.is_file() and path.suffix == ".npz":
        return _npz(path)
    if path.is_dir():
        return _image_folder(path, image_size)
    raise DataError("dataset path must be an ImageFolder directory or a .npz file", field="dataset.path")


def _npz(path: Path) -> Arrays:
    # numpy reads members lazily: object arrays (pickles) only fail on access, so read all inside the try.
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read .npz (pickled object arrays are refused): {exc}", field="dataset") from exc
    if "x" not in arrays or "y" not in arrays:
        raise DataError(".npz must hold arrays 'x' and 'y' (optional 'x_test', 'y_test')", field="dataset")
    x, y = _npz_images(arrays["x"]), _npz_labels(arrays["y"], "y")
    if len(x) != len(y):
        raise DataError(f".npz 'x' has {len(x)} samples but 'y' has {len(y)}", field="dataset")
    test_x = test_y = None
    if "x_test" in arrays and "y_test" in arrays:
        test_x, test_y = _npz_images(arrays["x_test"]), _npz_labels(arrays["y_test"], "y_test")
        if len(test_x) != len(test_y) or test_x.shape[1:] != x.shape[1:]:
            raise DataError(".npz 'x_test'/'y_test' do not match 'x' in count or image shape", field="dataset")
    num_classes = int(max(y.max(), test_y.max() if test_y is not None else 0)) + 1
    return x, y, test_x, test_y, [str(i) for i in range(num_classes)]


def _npz_images(x: np.ndarray) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) in uint8 or float -> (N,C,H,W) float32 in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f".npz 'x' must be (N,H,W), (N,H,W,C) or (N,C,H,W) with 1 or 3 channels, got {x.shape}",
                        field="dataset")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(".npz 'x' must be numeric", field="dataset")
    x = x.astype(np.float32)
    return x / 255.0 if x.max() > 1.0 else x


def _npz_labels(y: np.ndarray, key: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(f".npz '{key}' must be a 1-D array of non-negative integer labels", field="dataset")
    return y.astype(np.int64)


def image_folder_classes(root: Path) -> list[str]:
    """Class names of an ImageFolder split: its sub-directories, sorted (torchvision's rule)."""
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _image_folder(root: Path, image_size: int) -> Arrays:
    """`root/train/<class>/*` (+ optional `root/test/<class>/*`), or `root/<class>/*` alone."""
    train_root = root / "train" if (root / "train").is_dir() else root
    names = image_folder_classes(train_root)
    if len(names) < 2:
        raise DataError(f"an ImageFolder tree needs at least 2 class folders, found {len(names)}", field="dataset")
    train_x, train_y = _read_images(train_root, names, image_size)
    test_x = test_y = None
    if train_root != root and (root / "test").is_dir():
        test_x, test_y = _read_images(root / "test", names, image_size)
    return train_x, train_y, test_x, test_y, names


def _read_images(split_root: Path, names: list[str], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        folder = split_root / name
        if folder.is_dir():
            files += [(f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"no images found under {split_root.name}/", field="dataset")
    # Grayscale only when every sampled image is; otherwise RGB for all.
    with Image.open(files[0][0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"
    channels = 1 if mode == "L" else 3
    images = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    for i, (file, label) in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert(mode)
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot decode image {file.parent.name}/{file.name}: {exc}", field="dataset") from exc
        images[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        labels[i] = label
    return images.astype(np.float32) / 255.0, labels


# --- splitting -------------------------------------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded, stratified split: the same seed always holds out the same samples."""
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_test = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        test_idx += idx[:n_test].tolist()
    mask = np.zeros(len(y), dtype=bool)
    mask[test_idx] = True
    return x[~mask], y[~mask], x[mask], y[mask]


def _few_shot(x: np.ndarray, y: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded subset of `shots` training samples per class (all of a class if it has fewer)."""
    rng = np.random.default_rng(seed + 1)
    keep: list[int] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        keep += rng.permutation(idx)[:shots].tolist()
    keep_sorted = np.sort(np.asarray(keep))
    return x[keep_sorted], y[keep_sorted]


def _check_classes(train_y: np.ndarray, test_y: np.ndarray, num_classes: int) -> None:
    present = np.unique(train_y)
    if len(present) < 2:
        raise DataError("the training split holds fewer than 2 classes", field="dataset")
    if len(test_y) == 0:
        raise DataError("the test split is empty", field="dataset")
    if int(max(train_y.max(), test_y.max())) >= num_classes:
        raise DataError("a label is out of range of the class names", field="dataset")


def _resize(x: torch.Tensor, image_size: int) -> torch.Tensor:
    x = x.float()
    if x.shape[-1] == image_size and x.shape[-2] == image_size:
        return x
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
