"""Model zoo and job spec: every architecture fits any class/channel count; bad specs name their field."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from core.errors import WeightsError
from core.models import ARCHITECTURES, build_model, count_params, explained_layer, load_weights, save_weights
from core.spec import PRESETS, JobSpec


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_architecture_builds_for_any_class_and_channel_count(arch: str, in_channels: int) -> None:
    model = build_model(arch, 7, in_channels).eval()
    seen: list[torch.Tensor] = []
    handle = explained_layer(model).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, 32, 32))
    handle.remove()
    assert logits.shape == (2, 7)
    assert seen and seen[0].dim() == 4  # the explained layer is a conv stage with a spatial map


def test_safetensors_round_trip_and_mismatch_is_a_weights_error(tmp_path: Path) -> None:
    model = build_model("resnet8", 10, 3)
    save_weights(model, tmp_path / "m.safetensors")
    fresh = load_weights(build_model("resnet8", 10, 3), tmp_path / "m.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(build_model("resnet8", 5, 3), tmp_path / "m.safetensors")
    assert count_params(model) == count_params(fresh)


class _Payload:
    def __reduce__(self):  # would create a marker file if unpickled
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_posing_as_weights_is_refused_without_running_it(tmp_path: Path) -> None:
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned")
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError):
        load_weights(build_model("cnn", 10, 1), tmp_path / "evil.safetensors")
    assert not (tmp_path / "pwned").exists()


def test_preset_sets_terms_and_explicit_loss_fields_override_key_by_key() -> None:
    spec = JobSpec.model_validate(
        {"dataset": {"name": "digits"}, "method": "e2kd", "loss": {"explanation": {"distance": "mse"}, "at": 5}}
    )
    assert spec.loss.kd == 1.0 and spec.loss.explanation.weight == 1.0
    assert spec.loss.explanation.distance == "mse" and spec.loss.at == 5
    combined = JobSpec.model_validate(
        {"dataset": {"name": "digits"}, "method": "oracle", "loss": {"explanation": {"weight": 1.0}, "at": 100}}
    )
    assert combined.loss.oracle_gamma == PRESETS["oracle"]["oracle_gamma"] and combined.loss.at == 100
    bare = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": None, "loss": {"ce": 0.5}})
    assert bare.loss.kd == 0.0 and bare.loss.ce == 0.5


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"student": {"arch": "resnet9000"}}, ("student", "arch")),
        ({"teacher": {"arch": "vgg"}}, ("teacher", "arch")),
        ({"loss": {"kd": -1}}, ("loss", "kd")),
        ({"loss": {"explanation": {"weight": -0.1}}}, ("loss", "explanation", "weight")),
        ({"method": "magic"}, ("method",)),
        ({"training": {"epochs": 0}}, ("training", "epochs")),
        ({"dataset": {}}, ("dataset",)),
        ({"dataset": {"name": "digits", "shots_per_class": 0}}, ("dataset", "shots_per_class")),
        ({"surprise": 1}, ("surprise",)),
    ],
)
def test_bad_spec_fails_validation_naming_the_field(patch: dict, field: tuple[str, ...]) -> None:
    document = {"dataset": {"name": "digits"}, **patch}
    with pytest.raises(ValidationError) as error:
        JobSpec.model_validate(document)
    locations = [tuple(str(part) for part in e["loc"]) for e in error.value.errors()]
    assert any(loc[: len(field)] == field for loc in locations), locations
