"""The explainers: one class per attribution method, one registry, one way to make and compare maps.

- core.explain.base: the `Explainer` interface (what a method needs, its differentiable training
  form read from the training forward, its captum reference form) and the `FeatureTap` that
  gives the training form the tapped layer's output without a second forward.
- core.explain.registry: `EXPLAINERS`, `register`, and what spec validation, training, metrics
  and heatmaps ask of an explainer by name.
- One module per explainer (gradcam, input_gradient, input_x_gradient, bcos, and the CAM family:
  classic_cam, gradcampp, smoothgradcampp, scorecam, sscam, iscam, xgradcam, layercam over the
  shared core.explain.cam): each registers itself on import; adding one is one such module and
  one name in the import below. core.explain.settings: the job's sampling/masking settings.
- core.explain.maps: resizing, min-max scaling and the cosine of maps; core.explain.reference:
  captum maps in batches, for every map a user sees or a metric reads.
"""

from core.explain.base import Explainer, FeatureTap, ForwardPass, target_score
from core.explain.registry import (
    COMMON_EXPLAINER,
    EXPLAINERS,
    explainer_problem,
    explaining_forwards,
    explanation_context,
    explanation_maps,
    get_explainer,
    map_source,
    register,
    shown_explainers,
)

# The built-in explainers, in the order specs and messages list them: each registers itself on import.
from core.explain import gradcam, input_gradient, input_x_gradient, bcos  # noqa: F401, I001 - the registry, in order
# The CAM family (core.explain.cam holds what they share; each module is one method's weighting).
from core.explain import classic_cam, gradcampp, smoothgradcampp, scorecam  # noqa: F401, I001
from core.explain import sscam, iscam, xgradcam, layercam  # noqa: F401, I001

from core.explain.bcos import bcos_maps
from core.explain.gradcam import gradcam_maps
from core.explain.input_gradient import input_gradient_maps
from core.explain.input_x_gradient import input_x_gradient_maps
from core.explain.registry import student_side
from core.explain.settings import ExplainerSettings, current_settings, explainer_settings, use_settings
from core.explain.maps import map_cosine, minmax_normalize, resize_to_larger

__all__ = [
    "COMMON_EXPLAINER", "EXPLAINERS", "Explainer", "ExplainerSettings", "current_settings", "explainer_settings",
    "student_side",
    "use_settings", "FeatureTap", "ForwardPass", "bcos_maps", "explainer_problem",
    "explaining_forwards", "explanation_context", "explanation_maps", "get_explainer", "gradcam_maps",
    "input_gradient_maps", "input_x_gradient_maps", "map_cosine", "map_source", "minmax_normalize", "register",
    "resize_to_larger", "shown_explainers", "target_score",
]
