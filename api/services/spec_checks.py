"""What a job spec needs from this server, checked before anything is created.

`JobSpec` validates a spec on its own; only the server knows whether the dataset
and teacher weights it names exist, belong to the caller, and fit each other. A job
(api.routes.jobs) and every distinct child of a sweep (api.routes.sweeps) pass the
same checks here, so a bad spec is a 422 naming its field at submission, not a
failed job minutes later.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from api.services.errors import InvalidFormValue, PathNotAllowed, UnknownDataset, UnknownModel
from core.errors import DistillError, SpecError
from core.models.classes import class_index
from core.models.compat import DatasetShape, WeightsShape, fit_problems
from core.models.device import gpu_shortfall
from core.models.heads import starting_weights_problems
from core.spec import JobSpec, control_character_field
from core.spec.sweep import Child
from store import repository
from store.models import ModelRecord
from store.settings import Settings

# scikit-learn's digits: 10 classes of 8x8 grey images (core.data reads it the same way).
DIGITS_NUM_CLASSES, DIGITS_IN_CHANNELS = 10, 1
DIGITS_CLASS_NAMES = [str(digit) for digit in range(DIGITS_NUM_CLASSES)]


def check_no_control_characters(document: dict[str, Any]) -> None:
    """Text a person will read back (names, labels) holds no control characters; PostgreSQL refuses a NUL."""
    if (field := control_character_field(document)) is not None:
        raise InvalidFormValue(f"{field}: text must not contain control characters", field)


def _dataset_shape(
    spec: JobSpec, session: Session, settings: Settings, owner: str | None
) -> tuple[int | None, int | None]:
    """(num_classes, in_channels) of the spec's dataset where the server knows them; an error if it does not exist."""
    dataset = spec.dataset
    if dataset.path is not None:
        raise PathNotAllowed("the API never reads server paths sent by a client: upload the data with "
                             "POST /v1/datasets and pass its id as dataset.id", "dataset.path")
    if dataset.name is not None:
        if dataset.name == "digits":
            return DIGITS_NUM_CLASSES, DIGITS_IN_CHANNELS
        if dataset.name in settings.dataset_roots:
            return None, None
        known = ", ".join(sorted({"digits", *settings.dataset_roots}))
        raise UnknownDataset(f"unknown dataset '{dataset.name}'; known: {known}", "dataset.name")
    assert dataset.id is not None  # JobSpec guarantees exactly one source
    try:
        record = repository.get_dataset(session, dataset.id, owner)
    except repository.NotFound:
        raise UnknownDataset(f"no uploaded dataset with id '{dataset.id}'", "dataset.id") from None
    return record.num_classes, record.in_channels


def check_spec_against_server(spec: JobSpec, *, session: Session, settings: Settings, owner: str | None) -> None:
    """What JobSpec cannot know alone: the dataset and the teacher weights exist here, belong to the
    caller (`owner`; None: anyone's) and fit each other."""
    _check_devices(spec, session, settings)
    num_classes, in_channels = _dataset_shape(spec, session, settings, owner)
    _check_student_weights(spec, session, owner, DatasetShape(num_classes, in_channels))
    model_id = spec.teacher.weights
    if model_id is None:
        return
    model = _owned_model(session, model_id, owner, "teacher.weights")
    names = spec.teacher.class_names
    teacher_classes = len(names) if names else num_classes  # class_names: the teacher's own outputs
    problems = fit_problems(WeightsShape(model.arch, model.num_classes, model.in_channels),
                            arch=spec.teacher.arch, dataset=DatasetShape(teacher_classes, in_channels), job=True)
    if problems:
        raise SpecError(f"model '{model_id}' does not fit this job: {'; '.join(problems)}", "teacher.weights")
    if names and (spec.dataset.id is not None or spec.dataset.name == "digits"):
        dataset_names = DIGITS_CLASS_NAMES if spec.dataset.id is None else (
            repository.get_dataset(session, spec.dataset.id, owner).class_names.get("names") or [])
        class_index(names, list(dataset_names))  # a dataset class the teacher does not know: 422 naming it


def _check_devices(spec: JobSpec, session: Session, settings: Settings) -> None:
    """A CUDA job needs one worker that sees training.devices GPUs. Judged only when workers are present
    (the service knows them); with none present the job waits in the queue as any job does."""
    if spec.training.device != "cuda":
        return  # auto/cpu: gloo ranks are processes, any worker can run them
    workers = repository.present_workers(session, settings.heartbeat_s)
    if not workers:
        return
    shortfalls = [gpu_shortfall(spec.training.devices, worker.device) for worker in workers]
    if None not in shortfalls:
        most = spec.training.devices - min(short for short in shortfalls if short is not None)
        raise SpecError(
            f"training.devices is {spec.training.devices} on 'cuda', but the most CUDA devices any of the "
            f"{len(workers)} present worker(s) sees is {most}; lower training.devices or start a worker that sees "
            "that many GPUs (a `--gpus` worker sees one)", "training.devices")


def _owned_model(session: Session, model_id: str, owner: str | None, field: str) -> ModelRecord:
    """The uploaded model record `field` names, or a 422 on that field when the caller has none of that id."""
    try:
        return repository.get_model(session, model_id, owner)
    except repository.NotFound:
        raise UnknownModel(f"no uploaded model with id '{model_id}' (upload weights with POST /v1/models)",
                           field) from None


def _check_student_weights(spec: JobSpec, session: Session, owner: str | None, dataset: DatasetShape) -> None:
    """The student's starting weights exist here, belong to the caller and fit the student and the dataset
    (core.models.heads.starting_weights_problems, the engine's own rule: another class count needs head 'reset')."""
    model_id = spec.student.weights
    if model_id is None:
        return
    model = _owned_model(session, model_id, owner, "student.weights")
    problems = starting_weights_problems(WeightsShape(model.arch, model.num_classes, model.in_channels),
                                         spec.student.arch, dataset, spec.student.head)
    if problems:
        raise SpecError(f"model '{model_id}' does not fit this job's student: {'; '.join(problems)}",
                        "student.weights")


def check_children_against_server(
    children: list[Child], *, session: Session, settings: Settings, owner: str | None
) -> None:
    """Datasets and teacher weights exist here, for every distinct child (named by its combination).

    A problem names the grid path that produced it when one of the child's overrides is to
    blame (`grid.teacher.weights`), else the base spec's field (`base.dataset.id`)."""
    seen: set[str] = set()
    for child in children:
        key = json.dumps({role: child.spec[role] for role in ("dataset", "teacher", "student")}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_spec_against_server(JobSpec.model_validate(child.spec), session=session, settings=settings,
                                      owner=owner)
        except DistillError as error:
            combination = json.dumps(child.overrides, sort_keys=True)
            field = error.field or ""
            blamed = next((f"grid.{path}" for path in child.overrides if field.startswith(path)), f"base.{field}")
            raise type(error)(f"combination {child.index} {combination}: {error.message}", blamed) from None
