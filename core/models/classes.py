"""The teacher's class order: its output index k is not always the dataset's k-th class.

A teacher trained elsewhere orders its outputs its own way (`teacher.class_names`, the
teacher's output order). `class_index` matches those names to the dataset's classes by name,
and `map_teacher_classes` makes the teacher answer in the dataset's order: a forward hook on
the model itself selects, for dataset class k, the teacher's output of the same name. So every
consumer of the teacher's logits (KD, DKD, DIST, the explanation maps' target class, agreement,
teacher accuracy) sees mapped logits without knowing about the mapping, and module paths are
unchanged (the explained layer stays `layer3`). Classes the teacher has and the dataset lacks
are left out of its logits, hence out of its softmax; a dataset class the teacher does not know
is a SpecError naming it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.errors import SpecError

FIELD = "teacher.class_names"


def class_index(teacher_names: list[str], dataset_names: list[str]) -> torch.Tensor:
    """For each dataset class (in the dataset's order), the teacher's output index of the same name."""
    position = {name: index for index, name in enumerate(teacher_names)}
    unknown = [name for name in dataset_names if name not in position]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SpecError(f"{FIELD}: the teacher does not know the dataset's class(es) {shown}; it knows "
                        f"{', '.join(repr(name) for name in teacher_names[:10])}"
                        f"{' ...' if len(teacher_names) > 10 else ''}", field=FIELD)
    return torch.tensor([position[name] for name in dataset_names], dtype=torch.long)


class ClassSelection:
    """The forward hook: the teacher's logits, columns picked in the dataset's class order (on their device)."""

    def __init__(self, index: torch.Tensor) -> None:
        self.index = index

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output.index_select(1, self.index.to(output.device))


def map_teacher_classes(teacher: nn.Module, teacher_names: list[str], dataset_names: list[str]) -> nn.Module:
    """`teacher` answering in the dataset's class order; a no-op when both orders are the same."""
    index = class_index(teacher_names, dataset_names)
    if len(teacher_names) != len(dataset_names) or not torch.equal(index, torch.arange(len(dataset_names))):
        teacher.register_forward_hook(ClassSelection(index))
    return teacher
