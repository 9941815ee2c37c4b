"""Datasets: sources (digits, ImageFolder, npz), splits, decoded-once image stores (in RAM or on disk),
streamed sets, transforms.

Import from here: `from core.data import DataBundle, load_dataset`.
"""

from core.data.bundle import DataBundle
from core.data.images import ImageSet, MemoryImages, TensorImages, normalise, to_device
from core.data.load import load_dataset, memory_budget_bytes
from core.data.recipes import RECIPES, apply_recipe, resolve_recipe
from core.data.store import ImageStore, cache_dir, open_or_build
from core.data.stored import StoreImages
from core.data.sources import IMAGE_SUFFIXES
from core.data.splits import TEST_SPLIT_NAMES, find_splits, image_folder_classes
from core.data.stream import StreamImages
from core.data.transforms import augment_batch, fit_square, stream_transform

__all__ = [
    "IMAGE_SUFFIXES", "RECIPES", "TEST_SPLIT_NAMES", "DataBundle", "ImageSet", "ImageStore", "MemoryImages",
    "StoreImages", "StreamImages", "TensorImages", "apply_recipe", "cache_dir", "open_or_build", "resolve_recipe",
    "augment_batch", "find_splits", "fit_square", "image_folder_classes", "load_dataset", "memory_budget_bytes",
    "normalise", "stream_transform", "to_device",
]
