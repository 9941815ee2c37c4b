"""The loss terms: each method of DESIGN.md is a weighted sum of these units.

Every term reads what it needs from one `BatchContext` that the trainer fills once
per batch (logits, last-stage features, explanation maps), so combining methods
(`oracle + e2kd + at`) never runs a forward or a backward twice. Adding a method is
adding a `Term` subclass and one line in `TERMS`; the training loop does not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.explain import match_size, minmax_normalize
from core.spec import LossSpec


@dataclass
class BatchContext:
    """What one training step computed; `None` where no active term asked for it."""

    labels: torch.Tensor  # (N,)
    student_logits: torch.Tensor  # (N, classes), with graph
    student_features: torch.Tensor | None = None  # explained layer's output on x, with graph
    teacher_logits: torch.Tensor | None = None  # teacher on x~ (x, or x* with the oracle), no graph
    teacher_features: torch.Tensor | None = None  # teacher's explained layer on x, no graph
    student_maps: torch.Tensor | None = None  # (N, 1, h, w) with graph; only on guided steps
    target_maps: torch.Tensor | None = None  # teacher's (or the autoencoder's) maps, no graph


class Term(nn.Module):
    """One named loss unit; subclasses say which context fields they read in `needs`."""

    name = "term"
    needs: frozenset[str] = frozenset()

    def active(self, ctx: BatchContext) -> bool:
        """False on steps where the term has nothing to compare (e.g. a non-guided step)."""
        return True


class CrossEntropy(Term):
    """CE(S(x), y): the supervised term of every method."""

    name = "ce"

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        return F.cross_entropy(ctx.student_logits, ctx.labels)


class KnowledgeDistillation(Term):
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean (Hinton, Vinyals & Dean, 2015).

    The T^2 factor keeps the gradient scale of the soft targets independent of T.
    """

    name = "kd"
    needs = frozenset({"teacher_logits"})

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.teacher_logits is not None
        t = self.temperature
        student_log_probs = F.log_softmax(ctx.student_logits / t, dim=1)
        teacher_log_probs = F.log_softmax(ctx.teacher_logits / t, dim=1)
        return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True) * t * t


class ExplanationAlignment(Term):
    """L_exp(E_S(x), E_T(x)) for the teacher's top-1 class, maps resized to the larger.

    - `cosine`: mean_i 1 - cos(flatten(E_S,i), flatten(E_T,i)) (e2KD: Parchami-Araghi et al.,
      "Good Teachers Explain", CVPR 2024).
    - `mse`: MSE(minmax(E_S), minmax(E_T)), maps min-max normalised per sample (the VISAPP 2026
      explanation-guided distillation paper's choice).
    Only active on guided steps (every `explanation.every` steps), when the context carries maps.
    """

    name = "explanation"
    needs = frozenset({"maps"})

    def __init__(self, distance: str) -> None:
        super().__init__()
        if distance not in ("cosine", "mse"):
            raise ValueError(f"unknown explanation distance '{distance}'")
        self.distance = distance

    def active(self, ctx: BatchContext) -> bool:
        return ctx.student_maps is not None and ctx.target_maps is not None

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.student_maps is not None and ctx.target_maps is not None
        student_maps, target_maps = match_size(ctx.student_maps, ctx.target_maps)
        if self.distance == "cosine":
            cosine = F.cosine_similarity(student_maps.flatten(1), target_maps.flatten(1), dim=1, eps=1e-8)
            return (1.0 - cosine).mean()
        return F.mse_loss(minmax_normalize(student_maps), minmax_normalize(target_maps))


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Activation-based spatial attention of Zagoruyko & Komodakis: mean_c A_c^2, (N, 1, h, w)."""
    return features.pow(2).mean(dim=1, keepdim=True)


class AttentionTransfer(Term):
    """AT (Zagoruyko & Komodakis, ICLR 2017), at the last conv stage:

    q = normalize(flatten(mean_c A_c^2)) (unit L2 norm per sample), loss = mean((q_s - q_t)^2).
    The mean over the batch and the h*w entries is the reference code's, whose usual
    coefficient beta = 1000 is the `at` preset's weight. Maps of different resolution are
    bilinearly resized to the larger before normalising.
    """

    name = "at"
    needs = frozenset({"student_features", "teacher_features"})

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.student_features is not None and ctx.teacher_features is not None
        student_att, teacher_att = match_size(attention_map(ctx.student_features), attention_map(ctx.teacher_features))
        student_q = F.normalize(student_att.flatten(1), dim=1)
        teacher_q = F.normalize(teacher_att.flatten(1), dim=1)
        return (student_q - teacher_q).pow(2).mean()


class FitNetHint(Term):
    """FitNet hint (Romero et al., ICLR 2015): MSE(r(A_s), A_t) at the last conv stage.

    r is a trainable 1x1 convolution from the student's channels to the teacher's; it is
    optimised with the student (its parameters are this module's) but is not part of the
    exported student. Spatial sizes are matched by resizing the smaller map to the larger.
    """

    name = "fitnet"
    needs = frozenset({"student_features", "teacher_features"})

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.regressor = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.student_features is not None and ctx.teacher_features is not None
        hint, guided = match_size(self.regressor(ctx.student_features), ctx.teacher_features)
        return F.mse_loss(hint, guided)


class WeightedSum(nn.Module):
    """L = sum_k w_k * term_k(ctx), over the terms with w_k > 0 that are active on this step.

    Returns the total and each active term's unweighted value (detached), for the history.
    """

    def __init__(self, weighted_terms: list[tuple[float, Term]]) -> None:
        super().__init__()
        if not weighted_terms:
            raise ValueError("the loss has no term with a positive weight")
        self.terms = nn.ModuleList(term for _, term in weighted_terms)
        self.weights = [float(weight) for weight, _ in weighted_terms]

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(term.needs for term in self.terms))

    @property
    def names(self) -> list[str]:
        return [term.name for term in self.terms]

    def forward(self, ctx: BatchContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        values: dict[str, torch.Tensor] = {}
        for weight, term in zip(self.weights, self.terms):
            if not term.active(ctx):
                continue
            value = term(ctx)
            values[term.name] = value.detach()
            total = weight * value if total is None else total + weight * value
        assert total is not None, "no active term"
        return total, values


def term_weights(loss: LossSpec) -> dict[str, float]:
    """The terms a spec's (preset-merged) `loss` names, by name, with their positive weights."""
    weights = {
        "ce": loss.ce,
        "kd": loss.kd,
        "explanation": loss.explanation.weight,
        "at": loss.at,
        "fitnet": loss.fitnet,
    }
    return {name: float(weight) for name, weight in weights.items() if weight > 0}


def build_terms(loss: LossSpec, student_channels: int, teacher_channels: int) -> WeightedSum:
    """The weighted sum of `term_weights(loss)`; the channel counts size the FitNet regressor."""
    factories = {
        "ce": CrossEntropy,
        "kd": lambda: KnowledgeDistillation(loss.temperature),
        "explanation": lambda: ExplanationAlignment(loss.explanation.distance),
        "at": AttentionTransfer,
        "fitnet": lambda: FitNetHint(student_channels, teacher_channels),
    }
    return WeightedSum([(weight, factories[name]()) for name, weight in term_weights(loss).items()])


def cross_entropy_only() -> WeightedSum:
    """The loss of teacher training."""
    return WeightedSum([(1.0, CrossEntropy())])


def oracle_inputs(inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Oracle teacher input (Lee et al., BMVC 2023): x* = x - gamma * |x| * grad_x CE(T(x), y).

    One signed-gradient-like step that lowers the teacher's loss, so the teacher's soft
    targets on x* are closer to the label. The CE is summed over the batch (each sample's
    gradient is its own, whatever the batch size). `inputs` must have required grad in the
    forward that made `logits`; the graph is kept for other readers of the same forward.
    Returns x*, detached.
    """
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), inputs, retain_graph=True)
    return (inputs - gamma * inputs.abs() * grad).detach()
