"""Where images come from: scikit-learn's digits, an .npz, or an ImageFolder tree.

Array sources (digits, .npz) are small: read whole, as `[0, 1]` floats or uint8 at
their native size. An ImageFolder tree is first only a list of files and labels per
split (core.data.load decides whether to decode it into memory or stream it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.models.compat import image_channels, image_mode
from core.data.splits import find_splits, image_folder_classes
from core.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ArraySource:
    """Images `(N, C, H, W)` as uint8 or `[0, 1]` float32; `test_x` None when the source has no test split."""

    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    class_names: list[str]


@dataclass
class FolderSource:
    """The files of an ImageFolder tree; `test_files` None when it has no held-out folder."""

    files: list[Path]
    labels: np.ndarray
    test_files: list[Path] | None
    test_labels: np.ndarray | None
    test_split: str | None  # the held-out folder's name
    class_names: list[str]
    mode: str  # PIL mode all images are converted to: "L" or "RGB"

    @property
    def in_channels(self) -> int:
        return 1 if self.mode == "L" else 3


def digits() -> ArraySource:
    """scikit-learn's 8x8 digits (ships with the package: no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    return ArraySource(x, data.target.astype(np.int64), None, None, [str(i) for i in range(10)])


def read_path(path: Path, field: str = "dataset.path") -> ArraySource | FolderSource:
    """The source at `path`; `field` is the spec field that named it (`dataset.id` for an upload's local copy)."""
    if not path.exists():
        raise DataError("the dataset path does not exist", field=field)
    if path.is_file() and path.suffix == ".npz":
        return npz(path)
    if path.is_dir():
        return image_folder(path)
    raise DataError("dataset path must be an ImageFolder directory or a .npz file", field=field)


def npz(path: Path) -> ArraySource:
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
    return ArraySource(x, y, test_x, test_y, [str(i) for i in range(num_classes)])


def _npz_images(x: np.ndarray) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) in uint8 or float -> (N,C,H,W) uint8, or float32 in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f".npz 'x' must be (N,H,W), (N,H,W,C) or (N,C,H,W) with 1 or 3 channels, got {x.shape}",
                        field="dataset")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(".npz 'x' must be numeric", field="dataset")
    x = x.astype(np.float32)
    return x / 255.0 if x.max() > 1.0 else x


def _npz_labels(y: np.ndarray, key: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(f".npz '{key}' must be a 1-D array of non-negative integer labels", field="dataset")
    return y.astype(np.int64)


def image_folder(root: Path) -> FolderSource:
    """`root/train/<class>/*` + an optional held-out folder (see core.data.splits), or `root/<class>/*` alone."""
    train_root, test_root = find_splits(root)
    names = image_folder_classes(train_root)
    if len(names) < 2:
        raise DataError(f"an ImageFolder tree needs at least 2 class folders, found {len(names)}", field="dataset")
    files, labels = list_images(train_root, names)
    test_files = test_labels = None
    if test_root is not None:
        test_files, test_labels = list_images(test_root, names)
    return FolderSource(files, labels, test_files, test_labels, test_root.name if test_root else None, names,
                        _mode_of(files[0]))


def list_images(split_root: Path, names: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        folder = split_root / name
        if folder.is_dir():
            found = [f for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
            files += found
            labels += [label] * len(found)
    if not files:
        raise DataError(f"no images found under {split_root.name}/", field="dataset")
    return files, np.asarray(labels, dtype=np.int64)


def _mode_of(file: Path) -> str:
    """Grayscale only when the first image is; otherwise RGB for all."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as first:
            return image_mode(image_channels(first.mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {file.parent.name}/{file.name}: {exc}", field="dataset") from exc


def decode_images(files: list[Path], mode: str, image_size: int) -> np.ndarray:
    """(N, C, S, S) uint8: each photo's shorter side resized to S, center-cropped (aspect ratio kept)."""
    from PIL import Image, UnidentifiedImageError

    from core.data.transforms import image_pixels

    images = np.empty((len(files), 1 if mode == "L" else 3, image_size, image_size), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                images[i] = image_pixels(img, mode, image_size)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot decode image {file.parent.name}/{file.name}: {exc}", field="dataset") from exc
    return images
