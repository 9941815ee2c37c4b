"""The given teacher: weights a team brings (a state dict for `teacher.arch`, or a torch.export program),
checked against the dataset before a shape mismatch could confuse, with its class order mapped.

`teacher.class_names` (the teacher's output order) sets how many outputs the teacher has, so a
teacher with more classes than the dataset loads; core.models.classes then makes it answer in
the dataset's class order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from torch import nn

from core.data import DataBundle
from core.errors import SpecError
from core.models import LayerNotFound, explained_layer_path, load_state, set_explained_layer, set_input_normalisation
from core.models.classes import map_teacher_classes
from core.models.compat import DatasetShape, check_program_file, check_weights_file
from core.models.exported import is_exported_program
from core.models.inputs import feed_normalisation, model_normalisation
from core.spec import JobSpec

log = logging.getLogger(__name__)

Builder = Callable[[JobSpec, str, DataBundle, int | None], nn.Module]


def given_teacher(spec: JobSpec, data: DataBundle, path: Path, build: Builder) -> nn.Module:
    """The teacher at `path`, on the CPU, answering in the dataset's class order; `build` makes the
    architecture of a state dict (core.stages.build_role_model)."""
    names = spec.teacher.class_names
    expected = DatasetShape(len(names) if names else data.num_classes, data.in_channels)
    if is_exported_program(path):
        teacher = _program(spec, path, expected)
    else:
        teacher = build(spec, "teacher", data, expected.num_classes)
        load_state(teacher, check_weights_file(path, spec.teacher.arch, expected), field="teacher.weights")
        set_input_normalisation(teacher, data.mean, data.std)  # the job's data are the input
    if names:
        map_teacher_classes(teacher, names, list(data.class_names))
    return teacher


def feed_teacher_normalisation(spec: JobSpec, data: DataBundle, teacher: nn.Module) -> nn.Module:
    """teacher.normalize: the teacher is fed its own normalisation (core.models.inputs), given or trained here."""
    wanted = spec.teacher.normalize
    if wanted is None:
        return teacher
    if wanted == "model":
        found = model_normalisation(teacher)
        if found is None:
            raise SpecError("teacher.normalize: 'model' needs a timm teacher (its default config holds mean and "
                            "std); give {mean, std}", field="teacher.normalize")
        mean, std = found
    else:
        mean, std = wanted.mean, wanted.std
    if len(mean) != data.in_channels:
        raise SpecError(f"teacher.normalize: {len(mean)} channel(s) but the dataset's images have "
                        f"{data.in_channels}", field="teacher.normalize")
    return feed_normalisation(teacher, list(data.mean), list(data.std), list(mean), list(std))


def _program(spec: JobSpec, path: Path, expected: DatasetShape) -> nn.Module:
    """A torch.export teacher: the program is the architecture (teacher.arch is not used); teacher.layer
    names a module of the original code's hierarchy."""
    teacher = check_program_file(path, expected, spec.dataset.image_size, field="teacher.weights")
    if spec.teacher.layer is not None:
        try:
            set_explained_layer(teacher, spec.teacher.layer)
        except LayerNotFound as exc:
            raise SpecError(f"teacher.layer: {exc}", field="teacher.layer") from exc
    log.info("job %s: teacher is a torch.export program, explained at %s", spec.name, explained_layer_path(teacher))
    return teacher
