"""The numbers a distilled student is judged by (the `metrics.json` fields).

Accuracy alone does not say whether distillation worked: agreement says how far
the student imitates the teacher's decisions, explanation cosine whether it
decides from the same evidence, ECE whether its confidence can be trusted, and
parameters what the compression bought (latency too: the deployment table times both
models once, core.deploy, and metrics.json's headline latencies are read from it).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from core.explain.reference import captum_maps
from core.data import DataBundle
from core.explain import map_cosine, shown_explainers
from core.evaluate.calibration import expected_calibration_error
from core.evaluate.diagnostics import diagnostics
from core.models import count_params, predict_logits

log = logging.getLogger(__name__)


def evaluate(
    student: nn.Module,
    teacher: nn.Module,
    data: DataBundle,
    device: torch.device,
    *,
    batch_size: int = 256,
    explainer: str = "gradcam",
) -> dict:
    """All test-set metrics of a student against its teacher (see the module docstring).

    Explanation cosine compares the two models' captum maps for the TEACHER's top-1 class
    (the class the student was taught to explain), resized to the larger map; a sample where
    either map is all zeros scores 0. `explanation_cosine` uses the job's `explainer` (what
    the student was taught to match); `explanation_cosine_gradcam` always uses Grad-CAM, so
    jobs that explain differently still compare on one yardstick.
    """
    test_x, test_y = data.test_x, data.test_y
    student_logits = predict_logits(student, test_x, device, batch_size)
    teacher_logits = predict_logits(teacher, test_x, device, batch_size)
    student_top1, teacher_top1 = student_logits.argmax(dim=1), teacher_logits.argmax(dim=1)

    cosines = {
        name: float(map_cosine(captum_maps(teacher, test_x, teacher_top1, name, batch_size),
                               captum_maps(student, test_x, teacher_top1, name, batch_size)).mean())
        for name in shown_explainers(explainer)
    }

    student_params, teacher_params = count_params(student), count_params(teacher)
    metrics = {
        "student_accuracy": float((student_top1 == test_y).float().mean()),
        "teacher_accuracy": float((teacher_top1 == test_y).float().mean()),
        "agreement": float((student_top1 == teacher_top1).float().mean()),
        "explanation_cosine": cosines[explainer],
        "explanation_cosine_gradcam": cosines["gradcam"],
        "ece": expected_calibration_error(student_logits.softmax(dim=1), test_y),
        "student_params": student_params,
        "teacher_params": teacher_params,
        "compression_ratio": teacher_params / student_params,
    }
    log.info("evaluated on %d test images: %s", len(test_y), {k: round(v, 4) for k, v in metrics.items()})
    metrics["explainer"] = explainer
    metrics.update(diagnostics(student_logits, teacher_logits, test_y, data.num_classes))
    return metrics
