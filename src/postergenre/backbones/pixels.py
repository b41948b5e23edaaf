"""The study's plain "DNN" baseline: no network, the downscaled image's raw pixels."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register


class Pixels(nn.Module):
    """The study's plain "DNN" baseline: the downscaled image's raw pixels are the features."""

    def __init__(self, input_size: tuple[int, int]):
        super().__init__()
        self.feature_dim = 3 * input_size[0] * input_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register(
    name="pixels", feature_dim=3 * 48 * 48,
    input_size=(48, 48), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    weight_source="none (raw pixels)", load_weights=None, offline=True,
    description="the study's DNN baseline: raw 48x48 pixels",
)
def _pixels(state_dict: dict | None, input_size: tuple[int, int]) -> nn.Module:
    return Pixels(input_size)
