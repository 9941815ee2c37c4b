"""Weight files that are refused say what the file is and what was expected, never torch's advice."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from core.errors import WeightsError
from core.models import build_model, load_state, read_state_dict, save_weights
from core.models.weights import weights_format
from tests.teacher_code import Marker, OptionAResNet

TORCH_ADVICE = ("weights_only=False", "will likely succeed", "add_safe_globals", "PytorchStreamReader", "trust")


def _refused(path: Path) -> str:
    with pytest.raises(WeightsError) as raised:
        read_state_dict(path, field="file")
    message = raised.value.message
    assert raised.value.field == "file"
    assert not any(advice in message for advice in TORCH_ADVICE), message
    return message


def test_a_code_running_pth_names_the_refused_global_without_torch_advice(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Marker(marker)}, path)
    message = _refused(path)
    assert "not a plain state dict" in message and "open" in message
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["length", "json"])
def test_a_safetensors_file_with_a_corrupt_header_is_named_as_safetensors(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(build_model("cnn", 10, 1), path)
    data = bytearray(path.read_bytes())
    if damage == "length":
        data[:8] = struct.pack("<Q", 2**62)
    else:
        data[9:12] = b"}}}"
    path.write_bytes(bytes(data))
    assert weights_format(path) == "safetensors"
    assert "safetensors file with a corrupt header" in _refused(path)


def test_a_torchscript_archive_is_named_with_the_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(build_model("cnn", 10, 1)), str(path))
    message = _refused(path)
    assert message.startswith("a TorchScript archive (torch.jit.save); supported: safetensors, a PyTorch state dict")
    assert "torch.export program (.pt2" in message


def test_a_foreign_zip_and_garbage_are_named(tmp_path: Path) -> None:
    archive = tmp_path / "w.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("readme.txt", "hi")
    assert _refused(archive).startswith("a zip archive that is not a PyTorch file")
    garbage = tmp_path / "w.bin"
    garbage.write_bytes(b"garbage" * 10)
    assert _refused(garbage).startswith("not a weights file")


def test_a_truncated_pth_says_so_without_torch_text(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(build_model("cnn", 10, 1).state_dict(), buffer)
    path = tmp_path / "t.pth"
    path.write_bytes(buffer.getvalue()[:-300])
    assert "cannot be read (truncated or corrupt)" in _refused(path)


def test_a_state_dict_of_other_code_gets_counts_five_names_each_and_the_program_route() -> None:
    state = OptionAResNet(num_classes=10).state_dict()
    with pytest.raises(WeightsError) as raised:
        load_state(build_model("resnet20", 10, 3), state)
    message = raised.value.message
    assert "tensors expected;" in message and " missing (" in message and " unexpected (" in message
    assert "linear.weight" in message and "more" in message
    assert "torch.export program (.pt2)" in message and "Bring a teacher from your own code" in message
    assert len(message) < 1200
    missing = message.split(" missing (")[1].split(")")[0]
    assert len(missing.split(" and ")[0].split(", ")) == 5


def test_mis_shaped_tensors_are_counted_with_both_shapes() -> None:
    state = build_model("cnn", 5, 1).state_dict()
    with pytest.raises(WeightsError, match=r"mis-shaped: file vs model \(.*\(5, .*\) vs \(10, ") as raised:
        load_state(build_model("cnn", 10, 1), state)
    assert " missing (" not in raised.value.message
