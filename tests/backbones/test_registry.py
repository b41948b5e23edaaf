"""Every registry entry, one by one: a well-formed spec, an architecture that builds and runs on a
tiny input, and installed weights that load (the pattern of timm's test_models)."""

from __future__ import annotations

import pytest
import torch

from postergenre.backbones import (
    REGISTRY,
    BackboneSpec,
    WeightsUnavailable,
    available_backbones,
    build_backbone,
    get_spec,
    register,
    weights_fingerprint,
)
from postergenre.data.images import Preprocess

NAMES = available_backbones()


def tiny_size(spec: BackboneSpec) -> tuple[int, int]:
    """The smallest cheap input the architecture takes: its own size for raw pixels (the feature
    size is the pixel count), 80 px for Inception-v3 (it needs at least 75), else 64 px."""
    if spec.name == "pixels":
        return spec.input_size
    return (80, 80) if spec.name == "inception_v3" else (64, 64)


def run(backbone, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.module(batch.contiguous(memory_format=torch.channels_last))


def test_importing_the_package_registers_every_family():
    families = {get_spec(n).build.__module__.rsplit(".", 1)[-1] for n in NAMES}
    assert families == {"efficientnet_lite", "torchvision_family", "pixels", "concat"}


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_well_formed(name):
    spec = get_spec(name)
    assert isinstance(spec, BackboneSpec) and spec.name == name
    assert len(spec.input_size) == 2 and all(isinstance(n, int) and n > 0 for n in spec.input_size)
    assert len(spec.mean) == 3 and len(spec.std) == 3 and all(s > 0 for s in spec.std)
    assert spec.feature_dim > 0
    assert isinstance(spec.weight_source, str) and spec.weight_source
    assert spec.load_weights is None or callable(spec.load_weights)
    assert spec.preprocess() == Preprocess(spec.input_size, spec.mean, spec.std)
    assert spec.preprocess((96, 64)) == Preprocess((96, 64), spec.mean, spec.std)


@pytest.mark.parametrize("name", NAMES)
def test_architecture_builds_without_weights_and_runs(name):
    spec = get_spec(name)
    size = tiny_size(spec)
    # pretrained=False: the bare architecture, as when a saved model brings its own weights.
    backbone = build_backbone(name, input_size=size, pretrained=False)
    assert backbone.weights_origin == backbone.weights_id == "artifact"
    assert backbone.feature_dim == spec.feature_dim
    assert not backbone.module.training
    features = run(backbone, torch.randn(1, 3, *size))
    assert tuple(features.shape) == (1, spec.feature_dim)


@pytest.mark.parametrize("name", NAMES)
def test_installed_weights_load_from_the_package(name):
    spec = get_spec(name)
    if not spec.offline or spec.load_weights is None:
        pytest.skip(f"{name}: {spec.weight_source}")
    try:
        state_dict = spec.load_weights()
    except WeightsUnavailable as exc:
        pytest.skip(f"{name}: weights not installed ({exc})")
    size = tiny_size(spec)
    backbone = build_backbone(name, input_size=size)
    assert backbone.weights_origin == "package"
    assert backbone.weights_id == weights_fingerprint(state_dict)
    assert len(backbone.weights_id) == 16
    torch.manual_seed(0)
    features = run(backbone, torch.randn(2, 3, *size))
    assert tuple(features.shape) == (2, spec.feature_dim)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])  # different images, different features


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown backbone 'alexnet'") as err:
        get_spec("alexnet")
    assert "known: " + ", ".join(NAMES) in str(err.value)
    with pytest.raises(KeyError, match="alexnet"):
        build_backbone("alexnet")


def test_register_as_a_call_and_as_a_decorator(monkeypatch):
    from postergenre.backbones import registry

    monkeypatch.setattr(registry, "REGISTRY", dict(REGISTRY))
    fields = {"feature_dim": 3, "input_size": (4, 4), "mean": (0.0,) * 3, "std": (1.0,) * 3, "weight_source": "none"}

    @register(name="toy_mean", **fields)
    def build(state_dict, input_size):
        return _Mean()

    assert callable(build) and get_spec("toy_mean").build is build
    spec = register(BackboneSpec(name="toy_copy", build=build, **fields))
    assert get_spec("toy_copy") is spec
    assert tuple(run(build_backbone("toy_mean"), torch.ones(1, 3, 4, 4)).shape) == (1, 3)
    with pytest.raises(TypeError):
        register(spec, name="both")
    assert "toy_mean" not in REGISTRY  # the real registry is untouched


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))
