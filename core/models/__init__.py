"""Models by family (cifar, torchvision, timm, bcos), the explained layer of each, and weights I/O.

Import from here: `from core.models import build_model, explained_layer, load_weights`.
"""

from core.models.bcos_family import (
    BcosClassifier,
    is_bcos_arch,
    is_bcos_model,
    set_input_normalisation,
)
from core.models.cifar import BUILDERS as CIFAR_BUILDERS
from core.models.cifar import CifarResNet, SmallCNN
from core.models.device import pick_device
from core.models.inference import predict_logits
from core.models.layers import (
    LayerNotFound,
    LayerView,
    automatic_layer_path,
    explained_layer,
    explained_layer_path,
    set_explained_layer,
)
from core.models.registry import (
    ALIASES,
    FAMILIES,
    UnknownArchitecture,
    build_model,
    check_arch,
    close_matches,
    count_params,
    input_problem,
    split_arch,
)
from core.models.weights import (
    is_safetensors,
    load_state,
    load_weights,
    read_state_dict,
    save_state,
    save_weights,
    weights_dims,
)

# The short names of the zoo before families: CIFAR models plus the torchvision aliases (all still valid).
ARCHITECTURES: dict[str, str] = {**{name: f"cifar/{name}" for name in CIFAR_BUILDERS}, **ALIASES}

__all__ = [
    "ALIASES", "ARCHITECTURES", "BcosClassifier", "is_bcos_arch", "is_bcos_model",
    "set_input_normalisation", "FAMILIES", "CifarResNet", "LayerNotFound", "LayerView", "SmallCNN",
    "UnknownArchitecture", "automatic_layer_path", "build_model", "check_arch", "close_matches", "count_params",
    "input_problem",
    "explained_layer", "explained_layer_path", "is_safetensors", "load_state", "load_weights", "pick_device", "predict_logits", "read_state_dict",
    "save_state", "save_weights", "set_explained_layer", "split_arch", "weights_dims",
]
