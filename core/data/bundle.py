"""A dataset ready for the engine: a train and a test image set, class names and normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.data.images import ImageSet, TensorImages


@dataclass
class DataBundle:
    """What every source ends as. `train`/`test` may be in memory or streamed (see core.data.images).

    `test_split` says where the test images came from: the folder name (`val`, `valid`,
    `validation`, `test`), `arrays` (an .npz's x_test), or `random` (a seeded held-out share).
    """

    train: ImageSet
    test: ImageSet
    class_names: list[str]
    mean: list[float]  # per channel, to undo normalisation for display
    std: list[float]
    test_split: str = "random"
    streamed: bool = False

    @classmethod
    def from_tensors(
        cls, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
        class_names: list[str], mean: list[float], std: list[float],
    ) -> DataBundle:
        """A bundle of already normalised float tensors (for hosts and tests that make data by hand)."""
        return cls(TensorImages(train_x, train_y), TensorImages(test_x, test_y), class_names, mean, std)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    # Whole splits as normalised float tensors: for small in-memory sets and the test split's metrics.
    @property
    def train_x(self) -> torch.Tensor:
        return _whole(self.train)

    @property
    def train_y(self) -> torch.Tensor:
        return self.train.labels

    @property
    def test_x(self) -> torch.Tensor:
        return _whole(self.test)

    @property
    def test_y(self) -> torch.Tensor:
        return self.test.labels

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixels, for heatmap backgrounds."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def _whole(images: ImageSet) -> torch.Tensor:
    """A split as one float tensor; for a set read from disk, a stand-in read a slice at a time
    (core.data.stored.LazyImages), so evaluation never holds a split above the memory budget."""
    if getattr(images, "placement", None) == "disk":
        return images.view()  # type: ignore[attr-defined,return-value]
    return images.take(slice(None))
