"""`distill run` in this process (cli.run): a spec file in, the artifacts and a summary out, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.run import main
from tests.core.test_run import tiny_spec


def test_cli_runs_a_spec_file_and_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec("scratch", teacher={"epochs": 1}, training={"epochs": 1},
                                              report={"heatmaps": 0})))
    assert main([str(spec_file), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "ece"}
    assert (tmp_path / "out" / "student.safetensors").is_file()


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (json.dumps(tiny_spec("kd", training={"lr": -1})), "training.lr"),
        (json.dumps({**tiny_spec("kd"), "methd": "kd"}), "methd"),
        (json.dumps(tiny_spec("distil")), "method"),
        ('{"dataset": ', "Invalid JSON"),
    ],
)
def test_cli_rejects_an_invalid_spec_with_exit_code_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, field: str
) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(content)
    assert main([str(spec_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_spec_error_found_at_run_time_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec("kd", teacher={"weights": str(tmp_path / "missing.safetensors")})))
    assert main([str(spec_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "teacher.weights" in err and "Traceback" not in err


def test_cli_rejects_a_malformed_data_option(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main([str(tmp_path / "spec.json"), "--out", str(tmp_path), "--data", "no-equals-sign"])
    assert caught.value.code == 2


def test_cli_refuses_a_dataset_id_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dataset ids name a server's uploads: outside a server the spec gives a path or a name."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec("kd", dataset={"name": None, "id": "ds_elsewhere"})))
    assert main([str(spec_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "(dataset.id)" in err and "ds_elsewhere" in err and "Traceback" not in err
