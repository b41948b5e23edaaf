"""Backbones: pretrained networks that turn a poster into a feature vector, by name.

``registry`` holds the specs and :func:`build_backbone` (its docstring gives the order in which
weight sources are tried); ``weights`` reads, checks and fingerprints weights; each family
module registers its own entries when imported, and importing this package imports them all:
``efficientnet_lite`` (Lite0/1/2, plain and poster-tuned), ``torchvision_family`` (MobileNetV2,
ResNet-50 SSL, ResNet-50, VGG16, Inception-v3, EfficientNet-B0), ``pixels`` (raw pixels) and
``concat`` (backbones side by side). torchvision and efficientnet_lite_pytorch are imported only
when a backbone of theirs is built. ``features`` runs a backbone over files: frozen feature
extraction (ONNX Runtime, checked against PyTorch) with its on-disk cache; ``_malloc`` keeps
freed memory in the heap while PyTorch runs (set by :func:`build_backbone`).

May import: ``errors``, ``_io``, ``_export``, ``data``. Never ``text``, ``modeling`` or anything above them.
"""

from ..errors import WeightsUnavailable
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REGISTRY,
    SYMMETRIC_MEAN,
    SYMMETRIC_STD,
    BackboneSpec,
    LoadedBackbone,
    available_backbones,
    build_backbone,
    get_spec,
    register,
)
from .weights import (
    from_package,
    from_torchvision_hub,
    load_filtered,
    load_state_dict_file,
    package_file,
    weights_fingerprint,
)

# The families register their entries on import, in this order (REGISTRY keeps it).
from . import efficientnet_lite, torchvision_family, pixels, concat  # noqa: F401  # isort: skip
from .concat import Concat
from .efficientnet_lite import _PooledEfficientNetLite
from .pixels import Pixels

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGISTRY",
    "SYMMETRIC_MEAN",
    "SYMMETRIC_STD",
    "BackboneSpec",
    "Concat",
    "LoadedBackbone",
    "Pixels",
    "WeightsUnavailable",
    "_PooledEfficientNetLite",
    "available_backbones",
    "build_backbone",
    "from_package",
    "from_torchvision_hub",
    "get_spec",
    "load_filtered",
    "load_state_dict_file",
    "package_file",
    "register",
    "weights_fingerprint",
]
