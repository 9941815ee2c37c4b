"""Evaluation metrics on cases whose answer is known by construction."""

from __future__ import annotations

import pytest
import torch

from core.data import DataBundle, load_dataset
from core.evaluate import evaluate, expected_calibration_error
from core.deploy.deployment import cpu_batch1_ms
from core.deploy.latency import time_calls, torch_rows
from core.models import predict_logits
from core.models import build_model, count_params
from core.spec import DatasetSpec

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset(DatasetSpec(name="digits", image_size=16), seed=0)


def _model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, 10, 1)


def _constant_model(label: int, confidence_logit: float = 2.0) -> torch.nn.Module:
    """A small CNN whose head ignores its features: it always predicts `label` with the same probabilities."""
    model = _model("cnn")
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[label] = confidence_logit
    return model


# --- ECE ----------------------------------------------------------------------------------------------------


def test_ece_is_zero_when_confidence_equals_accuracy() -> None:
    probs = torch.tensor([[0.8, 0.2]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)  # 80% right at 80% confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)


def test_ece_is_one_half_when_certain_and_half_wrong() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    labels = torch.tensor([0, 0, 1, 2])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5)


def test_ece_weights_each_bin_by_its_share_of_samples() -> None:
    # 2 bins, (0, 0.5] and (0.5, 1]:
    #   low bin:  confidences 0.4, 0.4, one right       -> |0.5 - 0.4| = 0.1, weight 2/4
    #   high bin: confidences 0.9, 0.7, both right      -> |1.0 - 0.8| = 0.2, weight 2/4
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.1, 0.7, 0.2]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)


def test_ece_puts_a_confidence_on_a_bin_edge_in_the_lower_bin() -> None:
    # Bins (0, 0.5] and (0.5, 1]. Confidence 0.5 (right) alone in the lower bin: 1/2 * |1 - 0.5|;
    # confidence 0.9 (wrong) alone in the upper bin: 1/2 * |0 - 0.9|; total 0.7.
    # Were 0.5 in the upper bin, both would share it: |1/2 - 0.7| = 0.2.
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.7)


def test_ece_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="3 labels"):
        expected_calibration_error(torch.rand(2, 4), torch.tensor([0, 1, 2]))


# --- predictions and latency ---------------------------------------------------------------------------------


def test_predict_logits_matches_an_eval_forward_and_restores_training_mode(digits: DataBundle) -> None:
    model = _model("cnn").train()
    x = digits.test_x[:13]
    logits = predict_logits(model, x, CPU, batch_size=4)
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_headline_latency_is_the_tables_cpu_batch1_median_and_timing_leaves_the_model_alone(
    digits: DataBundle,
) -> None:
    """metrics.json's `<model>_latency_ms` is read from the deployment table: each model is timed once."""
    model = _model("cnn").train()
    rows = [row.as_dict() for row in torch_rows("student", model, digits.test_x[:4], 3, ["cpu"])]
    assert model.training  # timed on a copy
    batch1 = next(row for row in rows if row["batch"] == 1)
    assert cpu_batch1_ms(rows, "student") == batch1["median_ms"] > 0
    assert cpu_batch1_ms(rows, "teacher") is None
    with pytest.raises(ValueError, match="latency runs"):
        time_calls(lambda: None, runs=0)


# --- evaluate -----------------------------------------------------------------------------------------------


def test_a_student_that_is_the_teacher_agrees_fully(digits: DataBundle) -> None:
    teacher = _model("resnet8")
    metrics = evaluate(teacher, teacher, digits, CPU)
    assert metrics["agreement"] == 1.0
    assert metrics["explanation_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["student_accuracy"] == metrics["teacher_accuracy"]
    assert metrics["compression_ratio"] == 1.0


def test_metrics_of_a_constant_student_are_known(digits: DataBundle) -> None:
    teacher = _model("resnet8")
    student = _constant_model(label=3, confidence_logit=2.0)
    metrics = evaluate(student, teacher, digits, CPU)

    teacher_top1 = predict_logits(teacher, digits.test_x, CPU).argmax(dim=1)
    assert metrics["student_accuracy"] == pytest.approx(float((digits.test_y == 3).float().mean()))
    assert metrics["teacher_accuracy"] == pytest.approx(float((teacher_top1 == digits.test_y).float().mean()))
    assert metrics["agreement"] == pytest.approx(float((teacher_top1 == 3).float().mean()))
    # The head ignores the features: the student's Grad-CAM is all zeros, which counts as cosine 0.
    assert metrics["explanation_cosine"] == 0.0
    # One confidence for every sample, so one bin: ECE = |accuracy - confidence|.
    confidence = float(torch.softmax(torch.tensor([2.0] + [0.0] * 9), dim=0)[0])
    assert metrics["ece"] == pytest.approx(abs(metrics["student_accuracy"] - confidence), abs=1e-6)


def test_evaluate_reports_sizes_and_compression(digits: DataBundle) -> None:
    teacher, student = _model("resnet14"), _model("resnet8")
    metrics = evaluate(student, teacher, digits, CPU)
    assert metrics["student_params"] == count_params(student)
    assert metrics["teacher_params"] == count_params(teacher)
    assert metrics["compression_ratio"] == pytest.approx(count_params(teacher) / count_params(student))
    assert metrics["compression_ratio"] > 1.0
    assert 0.0 <= metrics["explanation_cosine"] <= 1.0  # Grad-CAM maps are non-negative
    assert 0.0 <= metrics["ece"] <= 1.0
    expected_keys = {
        "student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "ece", "student_params",
        "teacher_params", "compression_ratio",  # latencies come from the deployment table
        "per_class_accuracy", "reliability", "teacher_ece",
        "explanation_cosine_gradcam", "explainer",
    }
    assert set(metrics) == expected_keys
    assert metrics["explainer"] == "gradcam" and metrics["explanation_cosine_gradcam"] == metrics["explanation_cosine"]
