"""Several registered backbones run on the same poster as one backbone, features concatenated."""

from __future__ import annotations

import torch
from torch import nn

from . import efficientnet_lite, torchvision_family  # noqa: F401 - registers the members used below
from .registry import BackboneSpec, get_spec, register


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
    """The spec of ``first`` and ``others`` concatenated. Member ``i``'s weights are the keys
    ``"{i}.<its key>"`` of one state dict; the first member runs at the requested input size,
    the others at their own."""
    specs = [get_spec(n) for n in [first, *others]]

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
