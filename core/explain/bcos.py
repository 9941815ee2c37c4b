"""B-cos contribution maps (Böhle et al., "B-cos Alignment for Inherently Interpretable CNNs and Vision
Transformers", TPAMI 2024): sum_c W(x)_c * e_c, the dynamic linear map W(x) applied to the input.

A B-cos network computes y = W(x)·e, e = [p, 1 - p] its encoded input; with the dynamic weights
detached ("explanation mode"), dY_t/de = W(x), so e * dY_t/de summed over the encoded channels
is the contribution of each pixel, and the map of class t sums to logit t minus the logit layer's
constant bias. Only B-cos networks have W(x), so this explainer fits only them, and their
forwards run in explanation mode while it explains (e2KD, Parchami-Araghi et al., ECCV 2024,
trains B-cos students that way on every step).

Selected by `{"loss": {"explanation": {"explainer": "bcos"}}}` with a `bcos/<name>` teacher and
student (the `e2kd-bcos` preset).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar

import torch
from torch import nn

from core.explain.base import Explainer, ForwardPass, target_score
from core.explain.registry import register
from core.models import is_bcos_arch, is_bcos_model


def bcos_maps(
    logits: torch.Tensor, encoded: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Contribution maps sum_c W(x)_c * e_c, (N, 1, H, W).

    `encoded` is the model's encoded input e = [p, 1 - p] (tapped from its encoder) and
    `logits` must come from a forward in explanation mode (`explaining_forwards`), where the
    dynamic weights are detached so that dY_t/de = W(x). With `create_graph` the map is
    differentiable in the model's parameters (the student's side of e2KD).
    """
    (weights,) = torch.autograd.grad(target_score(logits, target), encoded, create_graph=create_graph,
                                     retain_graph=True)
    return (weights.float() * encoded.float()).sum(dim=1, keepdim=True)


@register
class Bcos(Explainer):
    """W(x)·x of a B-cos network, read at its input encoder, in explanation mode."""

    name: ClassVar[str] = "bcos"
    label: ClassVar[str] = "B-cos"
    reference: ClassVar[str] = ("captum LayerGradientXActivation on the B-cos input encoder "
                                "(contribution map W(x)*x), summed over channels")
    needs_layer: ClassVar[bool] = True

    def arch_problem(self, arch: str) -> str | None:
        if is_bcos_arch(arch):
            return None
        return f"the {self.name} explainer explains only B-cos models (bcos/<name>), not '{arch}'"

    def model_problem(self, model: nn.Module) -> str | None:
        return None if is_bcos_model(model) else f"the {self.name} explainer explains only B-cos models (bcos/<name>)"

    def layer(self, model: nn.Module) -> nn.Module:
        """The input encoder, whose output e is what W(x) multiplies (not the explained layer)."""
        self.check(model)
        return model.encoder

    def context(self, model: nn.Module) -> AbstractContextManager[None]:
        """Explanation mode: the dynamic weights detached, so gradients give W(x), not its derivative."""
        return model.explanation_mode() if is_bcos_model(model) else nullcontext()

    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        assert forward.activations is not None
        return bcos_maps(forward.logits, forward.activations, target, create_graph)

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """captum LayerGradientXActivation on the input encoder (in explanation mode), summed over encoded channels."""
        from captum.attr import LayerGradientXActivation

        return LayerGradientXActivation(model, self.layer(model)).attribute(inputs, target=target).sum(
            dim=1, keepdim=True)
