"""teacher.class_names: a teacher whose outputs are in another order (and has extra classes) teaches the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import SpecError
from core.models import save_state
from core.run import run_distillation
from core.spec import JobSpec
from tests.core.test_run import tiny_spec

DIGITS = [str(digit) for digit in range(10)]
ORDER = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]  # the permuted teacher's output j is digit ORDER[j]


def _permuted_with_an_extra_class(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same network with its head rows in ORDER, plus an eleventh class ('other') the dataset lacks."""
    permuted = dict(state)
    generator = torch.Generator().manual_seed(5)
    permuted["fc.weight"] = torch.cat([state["fc.weight"][ORDER], torch.randn(1, state["fc.weight"].shape[1],
                                                                              generator=generator)])
    permuted["fc.bias"] = torch.cat([state["fc.bias"][ORDER], torch.tensor([3.0])])  # would win an unmapped softmax
    return permuted


def _run(tmp_path: Path, weights: Path, names: list[str] | None) -> dict[str, Any]:
    teacher: dict[str, Any] = {"arch": "cnn", "weights": str(weights), "epochs": 0}
    if names is not None:
        teacher["class_names"] = names
    spec = JobSpec.model_validate(tiny_spec("kd", teacher=teacher, training={"epochs": 1}))
    return run_distillation(spec, tmp_path)


def test_a_permuted_teacher_with_class_names_scores_the_same_accuracy_and_kd_loss(
    trained_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    state = trained_teacher.state_dict()
    save_state(state, tmp_path / "plain.safetensors")
    save_state(_permuted_with_an_extra_class(state), tmp_path / "permuted.safetensors")

    plain = _run(tmp_path / "plain", tmp_path / "plain.safetensors", None)
    permuted = _run(tmp_path / "permuted", tmp_path / "permuted.safetensors", [DIGITS[i] for i in ORDER] + ["other"])

    assert plain["teacher_accuracy"] > 0.5
    assert permuted["teacher_accuracy"] == plain["teacher_accuracy"]
    plain_kd = [epoch["losses"]["kd"] for epoch in plain["history"]["student"][1:]]  # [0]: the epoch-0 evaluation
    permuted_kd = [epoch["losses"]["kd"] for epoch in permuted["history"]["student"][1:]]
    assert plain_kd
    assert permuted_kd == pytest.approx(plain_kd, rel=1e-5)
    assert permuted["agreement"] == pytest.approx(plain["agreement"], abs=1e-9)
    assert permuted["explained_layers"] == plain["explained_layers"]


def test_a_dataset_class_the_teacher_does_not_know_is_refused_naming_it(
    trained_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    save_state(trained_teacher.state_dict(), tmp_path / "plain.safetensors")
    names = [name if name != "7" else "seven" for name in DIGITS]
    with pytest.raises(SpecError, match="does not know the dataset's class\\(es\\) '7'") as raised:
        _run(tmp_path / "out", tmp_path / "plain.safetensors", names)
    assert raised.value.field == "teacher.class_names"


def test_class_names_need_given_weights_and_distinct_names() -> None:
    with pytest.raises(ValueError, match="describes given teacher weights"):
        JobSpec.model_validate(tiny_spec("kd", teacher={"class_names": DIGITS}))
    with pytest.raises(ValueError, match="distinct"):
        JobSpec.model_validate(tiny_spec("kd", teacher={"weights": "w.safetensors", "class_names": ["a", "a"]}))


def test_without_class_names_a_teacher_with_other_classes_is_refused_saying_how_to_map_them(
    trained_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    save_state(_permuted_with_an_extra_class(trained_teacher.state_dict()), tmp_path / "eleven.safetensors")
    with pytest.raises(SpecError, match="it has 11 classes but the dataset has 10 .*give teacher.class_names"):
        _run(tmp_path / "out", tmp_path / "eleven.safetensors", None)
