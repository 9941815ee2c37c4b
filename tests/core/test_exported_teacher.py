"""torch.export programs as teachers: loaded without running code from the file, explained like the original."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from captum.attr import LayerGradCam

from core.errors import WeightsError
from core.explain import FeatureTap, ForwardPass, explanation_maps
from core.explain.reference import captum_maps
from core.models import explained_layer, explained_layer_path, set_explained_layer
from core.models.exported import is_exported_program, load_exported, program_dims
from tests.teacher_code import OptionAResNet, export_program, marker_pickle, rewrite_archive


@pytest.fixture(scope="module")
def original() -> OptionAResNet:
    torch.manual_seed(0)
    model = OptionAResNet(num_classes=10)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so eval mode matters
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def program(original: OptionAResNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_program(original, tmp_path_factory.mktemp("pt2") / "teacher.pt2")


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(5, 3, 32, 32, generator=generator), torch.randint(0, 10, (5,), generator=generator)


def test_program_keeps_outputs_module_paths_and_is_frozen(original: OptionAResNet, program: Path) -> None:
    teacher = load_exported(program)
    x, _ = _batch()
    torch.testing.assert_close(teacher(x), original(x))
    assert {"layer1", "layer2", "layer3", "linear", "layer3.0.conv2"} <= {name for name, _ in teacher.named_modules()}
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    assert not teacher.training
    assert program_dims(teacher) == (10, 3)
    assert is_exported_program(program)


def test_automatic_layer_is_layer3_and_gradcam_equals_captum_on_the_original(
    original: OptionAResNet, program: Path
) -> None:
    teacher = load_exported(program)
    assert explained_layer_path(teacher) == "layer3"
    x, target = _batch(2)
    ours = captum_maps(teacher, x, target, "gradcam")
    reference = LayerGradCam(original, original.layer3).attribute(x.clone(), target=target, relu_attributions=True)
    assert reference.abs().max() > 1e-3
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)

    tap = FeatureTap(explained_layer(teacher))  # the training form: one forward, hooks on the program's layer3
    inputs = x.clone().requires_grad_()
    training_form = explanation_maps("gradcam", ForwardPass(teacher, inputs, teacher(inputs), tap.take()), target)
    tap.remove()
    torch.testing.assert_close(training_form, reference, atol=1e-5, rtol=1e-4)


def test_input_gradients_and_features_equal_the_original(original: OptionAResNet, program: Path) -> None:
    teacher = load_exported(program)
    x, target = _batch(3)
    torch.testing.assert_close(captum_maps(teacher, x, target, "input_gradient"),
                               captum_maps(original, x, target, "input_gradient"), atol=1e-5, rtol=1e-4)
    set_explained_layer(teacher, "layer2")  # teacher.layer: a path of the original code
    tap, reference = FeatureTap(explained_layer(teacher)), FeatureTap(original.layer2)
    teacher(x), original(x)
    torch.testing.assert_close(tap.take(), reference.take())


def test_a_malicious_pickle_in_the_sample_inputs_is_refused_and_never_runs(program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = rewrite_archive(program, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": marker_pickle(marker)})
    with pytest.raises(WeightsError, match="not weights-only"):
        load_exported(evil, field="file")
    assert not marker.exists()
    try:  # torch's own loader falls back to a full unpickle (then fails on the result): the threat is real
        torch.export.load(str(evil))
    except Exception:  # noqa: BLE001 - only the marker matters here
        pass
    assert marker.exists()


def test_a_malicious_pickled_weight_is_refused_and_never_runs(program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        config = json.loads(archive.read(f"{root}/data/weights/model_weights_config.json"))
    entry = config["config"]["linear.weight"]
    entry["use_pickle"] = True
    evil = rewrite_archive(program, tmp_path / "evil.pt2", {
        "data/weights/model_weights_config.json": json.dumps(config).encode(),
        f"data/weights/{entry['path_name']}": marker_pickle(marker),
    })
    with pytest.raises(WeightsError, match="not weights-only") as raised:
        load_exported(evil, field="file")
    assert raised.value.field == "file"
    assert not marker.exists()


@pytest.mark.parametrize(("member", "message"), [
    ("data/aotinductor/model/model.so", "AOTInductor compiled code"),
    ("code/__torch__/model.py", "unexpected member"),
])
def test_members_of_other_formats_are_refused(program: Path, tmp_path: Path, member: str, message: str) -> None:
    bad = rewrite_archive(program, tmp_path / "bad.pt2", {member: b"\x7fELF"})
    with pytest.raises(WeightsError, match=message):
        load_exported(bad)


def test_guards_code_from_the_file_is_never_compiled(program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        serialized = json.loads(archive.read(f"{root}/models/model.json"))
    serialized["guards_code"] = [f"open({str(marker)!r}, 'w') is None"]
    evil = rewrite_archive(program, tmp_path / "evil.pt2", {"models/model.json": json.dumps(serialized).encode()})
    teacher = load_exported(evil)
    teacher(torch.randn(2, 3, 32, 32))
    assert not marker.exists()


def test_a_compressed_archive_is_refused(program: Path, tmp_path: Path) -> None:
    packed = tmp_path / "packed.pt2"
    with zipfile.ZipFile(program) as archive, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as out:
        for info in archive.infolist():
            out.writestr(info.filename, archive.read(info.filename))
    with pytest.raises(WeightsError, match="compressed"):
        load_exported(packed)


def test_a_program_exported_for_one_batch_size_is_refused_with_the_recipe(tmp_path: Path) -> None:
    model = OptionAResNet().eval()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(4, 3, 32, 32),)), str(path))
    with pytest.raises(WeightsError, match=r"batches of exactly 4: export it with .*Dim\('batch'"):
        load_exported(path)


def test_a_run_distils_from_a_program_with_gradcam_at_and_fitnet(tmp_path: Path) -> None:
    from core.run import run_distillation
    from core.spec import JobSpec
    from tests.core.test_run import tiny_spec

    torch.manual_seed(0)
    path = export_program(OptionAResNet(num_classes=10, in_channels=1), tmp_path / "t.pt2", in_channels=1,
                          image_size=16)
    spec = JobSpec.model_validate(tiny_spec(
        "e2kd", teacher={"weights": str(path), "epochs": 0}, training={"epochs": 1},
        loss={"at": 10.0, "fitnet": 1.0},
    ))
    result = run_distillation(spec, tmp_path / "out")
    assert result["history"]["teacher"] == []
    losses = result["history"]["student"][-1]["losses"]  # [0] is the epoch-0 evaluation
    assert all(losses[term] > 0 for term in ("explanation", "at", "fitnet")), losses
    assert 0.0 <= result["teacher_accuracy"] <= 1.0


def test_a_program_for_another_image_size_is_a_spec_error_naming_the_field(tmp_path: Path) -> None:
    from core.errors import SpecError
    from core.run import run_distillation
    from core.spec import JobSpec
    from tests.core.test_run import tiny_spec

    path = export_program(OptionAResNet(num_classes=10, in_channels=1), tmp_path / "t.pt2", in_channels=1,
                          image_size=32)
    spec = JobSpec.model_validate(tiny_spec("kd", teacher={"weights": str(path), "epochs": 0}))
    with pytest.raises(SpecError, match="exported for 32x32 images but dataset.image_size is 16") as caught:
        run_distillation(spec, tmp_path / "out")
    assert caught.value.field == "teacher.weights"


def test_a_size_expression_that_would_run_code_is_refused_and_never_runs(program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        text = archive.read(f"{root}/models/model.json").decode()
    symbol = re.search(r'"expr_str": ("Symbol\([^"]*\)")', text)
    assert symbol is not None
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch() or 1"
    evil = rewrite_archive(program, tmp_path / "evil.pt2", {
        "models/model.json": text.replace(symbol.group(0), f'"expr_str": {json.dumps(payload)}', 1).encode()})
    with pytest.raises(WeightsError, match="size expression that is not plain arithmetic"):
        load_exported(evil)
    assert not marker.exists()
    try:  # torch's own loader hands the expression to sympy.sympify, which evaluates it: the threat is real
        torch.export.load(str(evil))
    except Exception:  # noqa: BLE001 - only the marker matters here
        pass
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "json"])
def test_a_damaged_program_is_a_weights_error_not_a_crash(program: Path, tmp_path: Path, damage: str) -> None:
    if damage == "truncated":
        bad = tmp_path / "bad.pt2"
        bad.write_bytes(program.read_bytes()[:-2000])
    else:
        bad = rewrite_archive(program, tmp_path / "bad.pt2", {"models/model.json": b'{"graph_module": 3}'})
    with pytest.raises(WeightsError):  # (a truncated archive may even show the inner zip of its sample inputs)
        load_exported(bad)



def test_tensor_constants_move_with_the_module(tmp_path: Path) -> None:
    class Scaled(OptionAResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])

    torch.manual_seed(0)
    model = Scaled().eval()
    teacher = load_exported(export_program(model, tmp_path / "scaled.pt2"))
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(teacher(x), model(x))
    teacher.to("meta")  # every tensor the graph reads must follow .to(device), or the forward mixes devices
    assert teacher(x.to("meta")).device.type == "meta"
