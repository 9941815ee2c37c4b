"""Datasets: sources (digits, ImageFolder, npz), splits, in-memory (uint8) and streamed image sets, transforms.

Import from here: `from core.data import DataBundle, load_dataset`.
"""

from core.data.bundle import DataBundle
from core.data.images import ImageSet, MemoryImages, TensorImages, normalise, to_device
from core.data.load import load_dataset, memory_budget_bytes
from core.data.sources import IMAGE_SUFFIXES
from core.data.splits import TEST_SPLIT_NAMES, find_splits, image_folder_classes
from core.data.stream import StreamImages
from core.data.transforms import augment_batch, fit_square, stream_transform

__all__ = [
    "IMAGE_SUFFIXES", "TEST_SPLIT_NAMES", "DataBundle", "ImageSet", "MemoryImages", "StreamImages", "TensorImages",
    "augment_batch", "find_splits", "fit_square", "image_folder_classes", "load_dataset", "memory_budget_bytes",
    "normalise", "stream_transform", "to_device",
]
