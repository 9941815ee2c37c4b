"""The explainers: one registry (`EXPLAINERS`) whose entries know both forms of their map.

captum makes every map a user sees or a metric reads (an entry's `captum` form, run in
batches by core.explain.reference); it runs its own forward and returns detached maps.
Training needs the student's map WITH a graph (the explanation loss is backpropagated
through it) and must not pay a second forward for it, so an entry's `maps` form reads
the last-stage activation through a forward hook during the ordinary forward and
differentiates the logits already computed. The tests pin the two forms of every entry
equal on the same model and layer.

Channel reduction (the same in both forms, so training and evaluation explain alike): `input_gradient` = sum over input channels of |dY_t/dx| (captum Saliency with
abs=True, then summed); `input_x_gradient` = sum over input channels of x * dY_t/dx,
signed (captum InputXGradient, then summed).
`bcos` = sum over the ENCODED input's channels of e * dY_t/de, the B-cos contribution
map W(x)·x (captum LayerGradientXActivation on the model's input encoder, then summed),
from a forward in explanation mode (dynamic weights detached).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.models import explained_layer, is_bcos_arch, is_bcos_model


class FeatureTap:
    """Keeps the output of one module from the latest forward pass (a forward hook).

    The model stays an unmodified torchvision/CIFAR module; the activation keeps its
    graph, so Grad-CAM can differentiate the logits with respect to it afterwards.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.activation: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.activation = output

    def take(self) -> torch.Tensor:
        """The activation of the latest forward; taking it drops the tap's reference (no graph kept alive)."""
        if self.activation is None:
            raise RuntimeError("the tapped layer has not run since the last take()")
        activation, self.activation = self.activation, None
        return activation

    def remove(self) -> None:
        self._handle.remove()
        self.activation = None


def _target_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_i logits[i, target[i]]: samples do not interact in eval mode, so one backward serves the batch."""
    return logits.gather(1, target.view(-1, 1)).sum()


def gradcam_maps(
    logits: torch.Tensor, activations: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): relu(sum_k alpha_k A_k), alpha_k = mean_hw dY_t/dA_k.

    `activations` (N, K, h, w) must be the tapped output the `logits` were computed from.
    Returns (N, 1, h, w) at the layer's resolution (no upsampling). With `create_graph`
    the map is differentiable in the model's parameters (for the student's loss).
    """
    (grads,) = torch.autograd.grad(
        _target_score(logits, target), activations, create_graph=create_graph, retain_graph=True
    )
    # float32 whatever the autocast precision: maps are cached and compared, so they keep full precision
    alpha = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * activations.float()).sum(dim=1, keepdim=True))


def input_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Saliency (Simonyan et al., 2014): sum_c |dY_t/dx_c|, (N, 1, H, W).

    `inputs` must have had requires_grad set before the forward that made `logits`.
    """
    (grads,) = torch.autograd.grad(_target_score(logits, target), inputs, create_graph=create_graph, retain_graph=True)
    return grads.float().abs().sum(dim=1, keepdim=True)


def input_x_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Input x gradient (Shrikumar et al., 2016): sum_c x_c * dY_t/dx_c, signed, (N, 1, H, W)."""
    (grads,) = torch.autograd.grad(_target_score(logits, target), inputs, create_graph=create_graph, retain_graph=True)
    return (inputs.float() * grads.float()).sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class Explainer:
    """One explainer in its two forms: the differentiable map training reads, and captum's map of the same thing.

    - `reads` is "activations" (the tapped explained layer) or "inputs" (x, which must have
      required grad during the forward).
    - `maps(logits, source, target, create_graph)`: the training form, `(N, 1, h, w)` from the
      forward the loss already ran (core.train.objective, core.signals).
    - `captum(model, inputs, target)`: the evaluation form, `(N, 1, h, w)` made by captum with its
      own forward (core.explain.reference: metrics, heatmaps, the autoencoder's targets). The model is in
      eval mode and inside `explanation_context`; `inputs` require grad when the explainer reads them.
    - `bcos_only`: it reads the dynamic linear map W(x) only B-cos networks have, so it fits only
      them, and their forwards run in explanation mode while it explains.
    The tests pin both forms equal for every entry.
    """

    name: str
    reads: str
    maps: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]
    captum: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    # The module whose output "activations" means, when not the explained layer (B-cos: the input encoder).
    source: Callable[[nn.Module], nn.Module] | None = None
    bcos_only: bool = False
    # How people see it named: heatmap captions, report tables, the model card (e.g. "Grad-CAM").
    label: str = ""
    # What makes the maps users see (core.explain.reference), for the heatmaps' PNG provenance.
    reference: str = ""

    @property
    def needs_input_grad(self) -> bool:
        return self.reads == "inputs"


def bcos_maps(
    logits: torch.Tensor, encoded: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """B-cos contribution maps (Böhle et al., 2024): sum_c W(x)_c * e_c, (N, 1, H, W).

    `encoded` is the model's encoded input e = [p, 1 - p] (tapped from its encoder) and
    `logits` must come from a forward in explanation mode (`explaining_forwards`), where the
    dynamic weights are detached so that dY_t/de = W(x). Summed over all pixels, the map of
    class t equals logit t minus the logit layer's constant bias. With `create_graph` the map
    is differentiable in the model's parameters (the student's side of e2KD).
    """
    (weights,) = torch.autograd.grad(_target_score(logits, target), encoded, create_graph=create_graph,
                                     retain_graph=True)
    return (weights.float() * encoded.float()).sum(dim=1, keepdim=True)


def _bcos_encoder(model: nn.Module) -> nn.Module:
    if not is_bcos_model(model):
        raise ValueError("the bcos explainer explains only B-cos models (bcos/<name>)")
    return model.encoder


# The evaluation forms. captum is imported when a map is made, not when the spec's explainer names are read
# (the API validates specs with this module and never makes a map).


def _captum_gradcam(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """captum LayerGradCam on the explained layer, relu'd, at the layer's resolution (not upsampled)."""
    from captum.attr import LayerGradCam

    return LayerGradCam(model, explained_layer(model)).attribute(inputs, target=target, relu_attributions=True)


def _captum_input_gradient(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """captum Saliency(abs=True), |dY_t/dx|, summed over the input channels."""
    from captum.attr import Saliency

    return Saliency(model).attribute(inputs, target=target, abs=True).sum(dim=1, keepdim=True)


def _captum_input_x_gradient(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """captum InputXGradient, x * dY_t/dx (signed), summed over the input channels."""
    from captum.attr import InputXGradient

    return InputXGradient(model).attribute(inputs, target=target).sum(dim=1, keepdim=True)


def _captum_bcos(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """captum LayerGradientXActivation on the input encoder (in explanation mode), summed over encoded channels."""
    from captum.attr import LayerGradientXActivation

    return LayerGradientXActivation(model, _bcos_encoder(model)).attribute(inputs, target=target).sum(
        dim=1, keepdim=True)


# The one lookup of explainers: adding one is one entry here, with its training and its captum form.
EXPLAINERS: dict[str, Explainer] = {
    "gradcam": Explainer("gradcam", "activations", gradcam_maps, _captum_gradcam, label="Grad-CAM",
                         reference="captum LayerGradCam"),
    "input_gradient": Explainer("input_gradient", "inputs", input_gradient_maps, _captum_input_gradient,
                                label="input gradient", reference="captum Saliency (abs), summed over channels"),
    "input_x_gradient": Explainer("input_x_gradient", "inputs", input_x_gradient_maps, _captum_input_x_gradient,
                                  label="input x gradient", reference="captum InputXGradient, summed over channels"),
    "bcos": Explainer("bcos", "activations", bcos_maps, _captum_bcos, source=_bcos_encoder, bcos_only=True,
                      label="B-cos", reference="captum LayerGradientXActivation on the B-cos input encoder "
                                               "(contribution map W(x)*x), summed over channels"),
}


def get_explainer(name: str) -> Explainer:
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer '{name}'; known: {', '.join(EXPLAINERS)}")
    return EXPLAINERS[name]


def shown_explainers(explainer: str) -> list[str]:
    """The explainers a job's heatmaps and explanation metrics show: its own, then Grad-CAM beside it.

    Grad-CAM fits every model here, so it is the common scale on which any two jobs compare,
    whatever explainer each was taught with; a Grad-CAM job shows Grad-CAM alone.
    """
    return list(dict.fromkeys((get_explainer(explainer).name, "gradcam")))


def explainer_problem(explainer: str, arch: str) -> str | None:
    """Why `explainer` cannot explain a model of architecture `arch`, or None when it fits.

    The one rule of which explainer fits which model: `bcos` reads the dynamic linear map
    W(x) that only B-cos networks have; the others fit every architecture (each has an
    explained layer and a differentiable forward), B-cos ones included.
    """
    if explainer not in EXPLAINERS:
        return f"unknown explainer '{explainer}'; known: {', '.join(EXPLAINERS)}"
    if EXPLAINERS[explainer].bcos_only and not is_bcos_arch(arch):
        return f"the {explainer} explainer explains only B-cos models (bcos/<name>), not '{arch}'"
    return None


def map_source(model: nn.Module, explainer: str) -> nn.Module | None:
    """The module an explainer reads when it is not the explained layer (the B-cos input encoder), else None."""
    source = get_explainer(explainer).source
    return source(model) if source is not None else None


def explanation_context(model: nn.Module, explainer: str | None) -> AbstractContextManager[None]:
    """What a forward needs for `explainer`: B-cos models in explanation mode for a `bcos_only` one, else nothing."""
    if explainer is not None and get_explainer(explainer).bcos_only and is_bcos_model(model):
        return model.explanation_mode()
    return nullcontext()


@contextmanager
def explaining_forwards(explainer: str | None, *models: nn.Module) -> Iterator[None]:
    """Distillation with the `bcos` explainer: its B-cos models run every forward in explanation mode.

    As in the e2KD code, the B-cos student trains with its dynamic weights detached on every
    step, guided or not (and whatever the explanation weight, so a kd baseline with
    `explainer: bcos` and weight 0 trains the same way), and the frozen teacher's maps are
    its W(x)·x. Other explainers leave the models as they are.
    """
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(explanation_context(model, explainer))
        yield


def explanation_maps(
    explainer: str,
    logits: torch.Tensor,
    activations: torch.Tensor | None,
    inputs: torch.Tensor | None,
    target: torch.Tensor,
    create_graph: bool = False,
) -> torch.Tensor:
    """One entry point for every explainer: Grad-CAM reads `activations`, the input methods `inputs`."""
    method = get_explainer(explainer)
    if not method.needs_input_grad:
        if activations is None:
            raise ValueError(f"{explainer} needs the tapped activations")
        return method.maps(logits, activations, target, create_graph)
    if inputs is None or not inputs.requires_grad:
        raise ValueError(f"{explainer} needs inputs that required grad during the forward")
    return method.maps(logits, inputs, target, create_graph)


def match_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two map (or feature) batches at one spatial size: the smaller is bilinearly resized to the larger.

    The same rule the evaluation's explanation cosine uses, so training optimises what is measured.
    """
    return resize_to_larger(a, b)


def resize_to_larger(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two `(N, C, h, w)` map batches to one spatial size: the larger one's (bilinear).

    "Larger" is the map with more pixels; a teacher and a student of different depth give
    Grad-CAM maps of different resolution, and upsampling the coarse one loses nothing of
    the fine one. Maps already of one size come back unchanged.
    """
    size_a, size_b = tuple(a.shape[-2:]), tuple(b.shape[-2:])
    if size_a == size_b:
        return a, b
    if size_a[0] * size_a[1] >= size_b[0] * size_b[1]:
        return a, _resize(b, size_a)
    return _resize(a, size_b), b


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each sample's map scaled to [0, 1]; a constant map becomes all zeros (no NaN, still differentiable)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(maps)
