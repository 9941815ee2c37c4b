"""DKD and DIST against values computed by hand (plain `math`/`statistics`) on tiny batches."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from core.spec import JobSpec
from core.terms import DIST, BatchContext, DecoupledKD, build_terms


def _logits(probabilities: list[list[float]], temperature: float = 1.0) -> torch.Tensor:
    """Logits whose softmax at `temperature` is exactly `probabilities` (rows summing to 1)."""
    return torch.tensor(probabilities, dtype=torch.float64).log() * temperature


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _dkd_by_hand(student: list[list[float]], teacher: list[list[float]], labels: list[int], alpha: float,
                 beta: float) -> float:
    """alpha * TCKD + beta * NCKD, batch mean, from the probabilities themselves."""
    total = 0.0
    for p_s, p_t, label in zip(student, teacher, labels):
        tckd = _kl([p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]])
        rest_t = [p for c, p in enumerate(p_t) if c != label]
        rest_s = [p for c, p in enumerate(p_s) if c != label]
        nckd = _kl([p / sum(rest_t) for p in rest_t], [p / sum(rest_s) for p in rest_s])
        total += alpha * tckd + beta * nckd
    return total / len(labels)


STUDENT = [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
TEACHER = [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.3, 0.2, 0.5]]
LABELS = [0, 0, 2]


def test_dkd_first_sample_by_hand() -> None:
    # b_t = [1/2, 1/2], b_s = [1/3, 2/3]: TCKD = 1/2 ln(3/2) + 1/2 ln(3/4); the non-target parts agree: NCKD = 0
    term = DecoupledKD(alpha=1.0, beta=8.0, temperature=1.0, warmup_epochs=0.0)
    ctx = BatchContext(labels=torch.tensor([0]), student_logits=_logits(STUDENT[:1]),
                       teacher_logits=_logits(TEACHER[:1]))
    assert term(ctx).item() == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), rel=1e-9)


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 1.0), (1.0, 8.0, 4.0), (0.5, 2.0, 2.0)])
def test_dkd_is_t_squared_alpha_tckd_plus_beta_nckd(alpha: float, beta: float, temperature: float) -> None:
    term = DecoupledKD(alpha, beta, temperature, warmup_epochs=0.0)
    ctx = BatchContext(labels=torch.tensor(LABELS), student_logits=_logits(STUDENT, temperature),
                       teacher_logits=_logits(TEACHER, temperature))
    expected = temperature**2 * _dkd_by_hand(STUDENT, TEACHER, LABELS, alpha, beta)
    assert term(ctx).item() == pytest.approx(expected, rel=1e-9)


def test_dkd_with_alpha_one_and_beta_one_minus_p_target_is_hinton_kd_per_sample() -> None:
    # The paper's identity KD = TCKD + (1 - p_t^y) NCKD, on one sample where beta = 1 - p_t^y = 1/2
    term = DecoupledKD(alpha=1.0, beta=0.5, temperature=1.0, warmup_epochs=0.0)
    ctx = BatchContext(labels=torch.tensor([0]), student_logits=_logits([STUDENT[1]]),
                       teacher_logits=_logits([[0.5, 0.3, 0.2]]))
    assert term(ctx).item() == pytest.approx(_kl([0.5, 0.3, 0.2], STUDENT[1]), rel=1e-9)


def test_dkd_warms_up_linearly_over_its_epochs() -> None:
    term = DecoupledKD(alpha=1.0, beta=8.0, temperature=1.0, warmup_epochs=2.0)
    full = _dkd_by_hand(STUDENT, TEACHER, LABELS, 1.0, 8.0)
    for epoch, factor in [(0.5, 0.25), (1.0, 0.5), (2.0, 1.0), (7.0, 1.0)]:
        ctx = BatchContext(labels=torch.tensor(LABELS), student_logits=_logits(STUDENT),
                           teacher_logits=_logits(TEACHER), epoch=epoch)
        assert term(ctx).item() == pytest.approx(factor * full, rel=1e-9)


def test_dkd_stays_finite_for_a_confident_teacher_and_pulls_the_student_towards_it() -> None:
    student = torch.zeros(2, 4, requires_grad=True)
    teacher = torch.tensor([[60.0, 0.0, 0.0, 0.0], [0.0, 0.0, 90.0, 1.0]])
    value = DecoupledKD(1.0, 8.0, 1.0, 0.0)(BatchContext(labels=torch.tensor([0, 2]), student_logits=student,
                                                         teacher_logits=teacher))
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(student.grad).all()
    assert student.grad[0, 0] < 0 and student.grad[1, 2] < 0


def _dist_by_hand(student: list[list[float]], teacher: list[list[float]], beta: float, gamma: float) -> float:
    inter = 1 - statistics.fmean(statistics.correlation(s, t) for s, t in zip(student, teacher))
    columns = range(len(student[0]))
    intra = 1 - statistics.fmean(
        statistics.correlation([row[c] for row in student], [row[c] for row in teacher]) for c in columns
    )
    return beta * inter + gamma * intra


@pytest.mark.parametrize(("beta", "gamma", "temperature"), [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 2.0)])
def test_dist_is_inter_plus_intra_class_pearson_distance(beta: float, gamma: float, temperature: float) -> None:
    student = [[0.4, 0.35, 0.25], *STUDENT[1:]]  # no constant row: Pearson needs some spread
    term = DIST(beta, gamma, temperature)
    ctx = BatchContext(labels=torch.tensor(LABELS), student_logits=_logits(student, temperature),
                       teacher_logits=_logits(TEACHER, temperature))
    expected = temperature**2 * _dist_by_hand(student, TEACHER, beta, gamma)
    assert term(ctx).item() == pytest.approx(expected, rel=1e-5)  # the eps of the authors' code in the denominator


def test_dist_ignores_a_linear_rescaling_of_the_teachers_probabilities_within_a_sample() -> None:
    # Pearson is invariant to y -> a*y + b: a student whose probabilities are a shifted, scaled copy pays nothing
    teacher = [[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]]
    student = [[0.5 * p + 1 / 6 for p in row] for row in teacher]
    term = DIST(beta=1.0, gamma=0.0, temperature=1.0)
    ctx = BatchContext(labels=torch.tensor(LABELS), student_logits=_logits(student), teacher_logits=_logits(teacher))
    assert term(ctx).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("method", "loss", "names"), [
    ("dkd", {}, ["ce", "dkd"]),
    ("dist", {}, ["ce", "dist"]),
    ("dkd", {"explanation": {"weight": 1.0}}, ["ce", "explanation", "dkd"]),
    ("dist", {"explanation": {"weight": 1.0, "distance": "mse"}}, ["ce", "explanation", "dist"]),
])
def test_dkd_and_dist_presets_combine_with_the_explanation_term(method: str, loss: dict, names: list[str]) -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": method, "loss": loss})
    assert build_terms(spec.loss, 8, 8).names == names


@pytest.mark.parametrize(("loss", "field"), [
    ({"dkd": {"weight": 1.0, "gamma": 2.0}}, ("loss", "dkd", "gamma")),
    ({"dkd": {"beta": -1.0}}, ("loss", "dkd", "beta")),
    ({"dist": {"temperature": 0.0}}, ("loss", "dist", "temperature")),
])
def test_dkd_and_dist_settings_are_validated_naming_the_field(loss: dict, field: tuple) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"dataset": {"name": "digits"}, "method": "dkd", "loss": loss})
    assert [error["loc"] for error in caught.value.errors()] == [field]
