"""The backbone registry and where weights come from (package, file, hub, random init)."""

from __future__ import annotations

import pytest
import torch

from postergenre.backbones import (
    REGISTRY,
    WeightsUnavailable,
    available_backbones,
    build_backbone,
    get_spec,
    load_filtered,
    weights_fingerprint,
)

SMALL = (64, 64)  # a small input keeps CPU time low; the pooled feature size does not change


def features_of(backbone, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.module(batch.contiguous(memory_format=torch.channels_last))


def test_registry_has_the_study_backbones():
    expected = {"efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2", "resnet50", "vgg16",
                "inception_v3", "efficientnet_b0", "resnet50_ssl", "pixels"}
    assert expected <= set(available_backbones())
    assert available_backbones() == sorted(REGISTRY)
    for name in expected:
        spec = get_spec(name)
        assert spec.name == name and spec.feature_dim > 0 and len(spec.input_size) == 2
        assert len(spec.mean) == 3 and len(spec.std) == 3
    assert get_spec("vgg16").feature_dim == 4096
    assert get_spec("inception_v3").input_size == (299, 299)
    assert {n for n in expected if get_spec(n).offline} >= {"efficientnet_lite0", "efficientnet_lite2",
                                                             "mobilenet_v2", "resnet50_ssl", "pixels"}
    assert not get_spec("resnet50").offline


def test_lite0_weights_are_real_imagenet_weights():
    spec = get_spec("efficientnet_lite0")
    sd = spec.load_weights()
    # The ImageNet classifier ships with the file: 1000 classes.
    assert tuple(sd["_fc.weight"].shape) == (1000, 1280)
    # Trained batch-norm statistics, not the fresh ones (mean 0, var 1).
    assert not torch.allclose(sd["_bn0.running_var"], torch.ones_like(sd["_bn0.running_var"]))
    assert sd["_bn0.running_mean"].abs().max() > 0.01
    # The fingerprint is stable (saved models refer to it) ...
    a = build_backbone("efficientnet_lite0", input_size=SMALL)
    b = build_backbone("efficientnet_lite0", input_size=SMALL)
    assert a.weights_id == b.weights_id == weights_fingerprint(sd) == "32fde8ba08ccb6c3"
    # ... and differs from a random init of the same architecture.
    random_init = spec.build(None, SMALL)
    random_sd = {k.removeprefix("net."): v for k, v in random_init.state_dict().items()}
    assert weights_fingerprint(random_sd) != a.weights_id
    loaded = a.module.state_dict()["net._conv_stem.weight"]
    assert torch.equal(loaded, sd["_conv_stem.weight"])
    assert not torch.equal(random_init.state_dict()["net._conv_stem.weight"], loaded)


def test_pixels_backbone():
    backbone = build_backbone("pixels", input_size=(8, 6))
    assert backbone.weights_origin == "none" and backbone.weights_id == "none"
    assert backbone.feature_dim == 3 * 8 * 6
    x = torch.arange(2 * 3 * 8 * 6, dtype=torch.float32).reshape(2, 3, 8, 6)
    f = features_of(backbone, x)
    assert torch.equal(f, x.reshape(2, -1))
    assert build_backbone("pixels").feature_dim == 3 * 48 * 48


def test_resnet50_without_weights_or_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download to find
    with pytest.raises(WeightsUnavailable, match="--weights FILE"):
        build_backbone("resnet50")
    backbone = build_backbone("resnet50", input_size=SMALL, allow_random_init=True)
    assert backbone.weights_origin == "random init"
    assert backbone.weights_id == "random init"
    assert tuple(features_of(backbone, torch.randn(1, 3, *SMALL)).shape) == (1, 2048)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    import torchvision

    torch.manual_seed(123)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(sd, path)
    return path, sd


def test_resnet50_from_torchvision_state_dict_file(resnet50_file):
    path, sd = resnet50_file
    backbone = build_backbone("resnet50", weights=path, input_size=SMALL)
    assert backbone.weights_origin == f"file:{path}"
    assert backbone.weights_id == weights_fingerprint(sd)
    assert torch.equal(backbone.module.state_dict()["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])
    assert "fc.weight" not in backbone.module.state_dict()  # the classifier is stripped
    assert tuple(features_of(backbone, torch.randn(2, 3, *SMALL)).shape) == (2, 2048)
    # resnet50_ssl takes a plain torchvision ResNet-50 state dict too
    ssl = build_backbone("resnet50_ssl", weights=path, input_size=SMALL)
    assert torch.equal(ssl.module.state_dict()["conv1.weight"], sd["conv1.weight"])


def test_weights_file_with_wrong_shapes(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)  # same keys, other shapes
    with pytest.raises(WeightsUnavailable, match="do not fit resnet50"):
        build_backbone("resnet50", weights=path)
    with pytest.raises(WeightsUnavailable, match="do not fit"):
        build_backbone("resnet50_ssl", weights=path)
    with pytest.raises(WeightsUnavailable, match="do not fit"):
        build_backbone("efficientnet_lite0", weights=path)


# The three builders that load weights share one filtered loader: each refuses a key the
# architecture lacks and one it needs, but not the classifier it drops anyway.
@pytest.mark.parametrize("name, arch, needed, dropped", [
    ("resnet50", "resnet50", "conv1.weight", None),
    ("resnet50_ssl", "resnet50_ssl", "conv1.weight", "fc.weight"),
    ("efficientnet_lite0", "efficientnet-lite0", "_conv_stem.weight", "_fc.weight"),
])
def test_weights_with_a_missing_or_extra_key(name, arch, needed, dropped, resnet50_file):
    good = get_spec(name).load_weights() if name == "efficientnet_lite0" else resnet50_file[1]
    with pytest.raises(WeightsUnavailable, match=rf"do not fit {arch}: missing \['{needed}'\], unexpected \[\]"):
        build_backbone(name, weights={k: v for k, v in good.items() if k != needed}, input_size=SMALL)
    with pytest.raises(WeightsUnavailable, match=rf"do not fit {arch}: missing \[\], unexpected \['extra.weight'\]"):
        build_backbone(name, weights={**good, "extra.weight": torch.zeros(1)}, input_size=SMALL)
    if dropped is not None:
        backbone = build_backbone(name, weights={k: v for k, v in good.items() if k != dropped}, input_size=SMALL)
        assert backbone.weights_origin == "state dict"


def test_load_filtered_ignores_only_the_given_prefixes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    sd = {k: torch.ones_like(v) for k, v in net.state_dict().items()}
    load_filtered(net, {k: v for k, v in sd.items() if not k.startswith("1.")}, "toy", ignore=("1.",))
    assert torch.equal(net[0].weight, torch.ones(3, 2)) and not torch.equal(net[1].weight, torch.ones(4, 3))
    with pytest.raises(WeightsUnavailable, match=r"do not fit toy: missing \['1.weight', '1.bias'\]"):
        load_filtered(net, {k: v for k, v in sd.items() if not k.startswith("1.")}, "toy")
    with pytest.raises(WeightsUnavailable, match="do not fit toy: size mismatch for 0.weight"):
        load_filtered(net, {**sd, "0.weight": torch.ones(2, 2)}, "toy", ignore=("1.",))


def test_weights_file_with_wrong_keys_or_not_a_state_dict(tmp_path):
    junk = tmp_path / "junk.pth"
    torch.save({"foo": torch.zeros(3)}, junk)
    with pytest.raises(WeightsUnavailable, match="do not fit resnet50"):
        build_backbone("resnet50", weights=junk)
    text = tmp_path / "text.pth"
    text.write_text("not a torch file")
    with pytest.raises(WeightsUnavailable, match="not a readable"):
        build_backbone("resnet50", weights=text)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        build_backbone("resnet50", weights=tmp_path / "missing.pth")


def test_concat_backbone_feeds_each_member_its_own_normalisation_and_size():
    import torch

    from postergenre.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone

    both = build_backbone("efficientnet_lite0_poster+mobilenet_v2")
    lite = build_backbone("efficientnet_lite0_poster")
    mnv2 = build_backbone("mobilenet_v2")
    assert both.feature_dim == lite.feature_dim + mnv2.feature_dim == 2272 + 1280
    x01 = torch.rand(2, 3, 384, 256)
    x = (x01 - 0.5) / 0.5  # the first member's (EfficientNet-Lite's) normalisation
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x_mnv2 = torch.nn.functional.interpolate((x01 - mean) / std, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        got = both.module(x)
        torch.testing.assert_close(got[:, :2272], lite.module(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[:, 2272:], mnv2.module(x_mnv2), atol=1e-4, rtol=1e-4)
