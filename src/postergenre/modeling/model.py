"""The model: a backbone plus a head, and its artifact on disk.

A model directory holds ``config.json`` (backbone, preprocessing, genres, decision rule,
recipe, split fingerprint, validation metrics, weights checksum), ``model.safetensors``
(head weights, plus backbone weights when they do not come from an installed package) and
``MODEL.md``. Only JSON and safetensors are ever read from it: no pickle. Saves are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..backbones import LoadedBackbone, build_backbone, get_spec
from ..data.images import Preprocess, is_one_poster, poster_batch
from ..errors import ModelError  # noqa: F401 - re-exported
from .._io import atomic_directory
from .artifact import (CARD_FILE, CONFIG_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE, check_directory,  # noqa: F401 - re-exported
                       read_config, read_split, resolve_model_path, sha256_file)
from .calibration import Calibration
from .config import BackboneConfig, ConfigAccessors, HeadConfig, ModelConfig
from .decision import DecisionRule




class Head(nn.Module):
    """Standardise features with the training set's statistics, then a linear layer or an MLP.

    Input ``(B, D)`` features, output ``(B, G)`` logits.
    """

    def __init__(self, in_dim: int, n_out: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        if hidden:
            self.net = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
            )
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.feature_mean) / self.feature_std)


# Head kinds: name -> builder(in_dim, n_out, hidden, dropout). One entry per new kind.
HEADS: dict[str, Callable[[int, int, int, float], nn.Module]] = {
    "linear": lambda d, g, hidden, p: Head(d, g, 0, p),
    "mlp": lambda d, g, hidden, p: Head(d, g, hidden or 512, p),
}


class Ensemble(nn.Module):
    """Several heads of one kind (trained from different seeds): the mean of their logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(features) for m in self.members]).mean(0)


def build_head(kind: str, in_dim: int, n_out: int, hidden: int = 0, dropout: float = 0.0, members: int = 1) -> nn.Module:
    """A head of ``kind`` (see :data:`HEADS`), or an :class:`Ensemble` of ``members`` of them."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}: choose one of {', '.join(HEADS)}")
    if members <= 1:
        return HEADS[kind](in_dim, n_out, hidden, dropout)
    return Ensemble([HEADS[kind](in_dim, n_out, hidden, dropout) for _ in range(members)])


class PosterGenreModel(nn.Module, ConfigAccessors):
    """Backbone + head. ``forward`` maps images ``(B, 3, H, W)`` to logits ``(B, G)``."""

    engine = "torch"

    def __init__(self, backbone: LoadedBackbone, head: nn.Module, config: ModelConfig):
        super().__init__()
        self.backbone_info = backbone
        self.backbone = backbone.module
        self.head = head
        self.config = config
        cal = config.calibration
        self.calibration = Calibration.from_dict(cal) if cal else Calibration(len(config.genres))

    def set_calibration(self, calibration: Calibration) -> None:
        """Use ``calibration`` from now on (and record it in the config, which is what is saved)."""
        self.calibration = calibration
        self.config.calibration = calibration.to_dict()

    # --- inference -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated logits ``(B, G)``: their sigmoid reads as a probability per genre."""
        return self.calibration(self.head(self.backbone(x)))

    @torch.inference_mode()
    def predict_proba_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """Scores ``(B, G)`` in [0, 1] for a preprocessed batch ``(B, 3, H, W)`` (tensor or array)."""
        self.eval()
        device = next(self.head.parameters()).device
        x = torch.as_tensor(batch).to(device).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self(x)).float().cpu().numpy()

    @torch.inference_mode()
    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Scores ``(N, G)`` from backbone features ``(N, D)`` (frozen mode's fast path)."""
        self.eval()
        device = next(self.head.parameters()).device
        return torch.sigmoid(self.calibration(self.head(torch.as_tensor(features, device=device)))).float().cpu().numpy()

    def predict_proba(self, images) -> np.ndarray:
        """Scores ``(N, G)`` (columns: :attr:`genres`) for posters given as PIL images (any
        mode), paths (``str``/``Path``), the bytes of image files, or preprocessed ``(3, H, W)``
        tensors; one poster alone counts as a list of one. A path is decoded exactly as
        ``postergenre predict`` decodes it; an unreadable one raises ImageLoadError naming it."""
        one = is_one_poster(images) or (torch.is_tensor(images) and images.dim() == 3)
        xs = [im if torch.is_tensor(im) else torch.from_numpy(poster_batch([im], self.preprocess)[0])
              for im in ([images] if one else images)]
        return self.predict_proba_tensor(torch.stack(xs)) if xs else np.zeros((0, len(self.genres)), dtype=np.float32)

    def predict(self, images, decision: DecisionRule | None = None) -> list[list[str]]:
        """Predicted genre names per poster (the inputs of :meth:`predict_proba`), under
        ``decision`` (default: the model's rule)."""
        mask = (decision or self.decision).apply(self.predict_proba(images))
        return [[g for g, m in zip(self.genres, row) if m] for row in mask]

    # --- persistence -----------------------------------------------------------------------
    def state_for_saving(self) -> dict[str, torch.Tensor]:
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        tuned = tuple(self.config.backbone.tuned)
        if self.config.backbone.in_artifact:
            tensors.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        elif tuned:  # only the trained blocks travel; the rest is re-read from the weights package
            tensors.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items() if k.startswith(tuned)})
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def save(self, out_dir: str | Path, card: str | None = None, extra_files: dict[str, str] | None = None) -> Path:
        """Write the model directory atomically; returns its path."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            save_file(self.state_for_saving(), str(tmp / WEIGHTS_FILE))
            self.config.weights_sha256, self.config.package_version = sha256_file(tmp / WEIGHTS_FILE), __version__
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            if card is not None:
                (tmp / CARD_FILE).write_text(card)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

        return atomic_directory(out_dir, write)


def load_model(model_dir: str | Path | None = None, device: str = "cpu", backbone_weights: str | Path | None = None) -> PosterGenreModel:
    """Load a model directory (``None``/"default": the built-in model).

    Refuses directories holding pickles, configs that point outside the directory, weights
    whose checksum or shapes do not match the config.
    """
    model_dir = resolve_model_path(model_dir)
    check_directory(model_dir)
    cfg = read_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    tensors = _read_weights(weights, cfg)
    backbone = _load_backbone(cfg, tensors, weights, backbone_weights)
    head = _load_head(cfg, backbone.feature_dim, tensors, weights)
    try:
        model = PosterGenreModel(backbone, head, cfg).to(device).eval()
    except ValueError as exc:
        raise ModelError(f"{model_dir / CONFIG_FILE}: bad calibration ({exc})") from None
    model.model_dir = model_dir  # where its int8 ranges and text branch live
    return model


def _read_weights(weights: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights.is_file():
        raise ModelError(f"{weights.parent}: {WEIGHTS_FILE} is missing")
    if cfg.weights_sha256 and sha256_file(weights) != cfg.weights_sha256:
        raise ModelError(f"{weights}: checksum does not match config.json (file damaged or replaced)")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None


def _load_backbone(cfg: ModelConfig, tensors: dict, weights: Path, backbone_weights) -> LoadedBackbone:
    """The backbone: rebuilt from the artifact's own weights, or from the package's plus the tuned blocks."""
    b = cfg.backbone
    try:
        if not b.in_artifact:
            backbone = build_backbone(b.name, weights=backbone_weights, input_size=cfg.preprocess.size)
            if backbone.weights_id != b.weights_id:
                raise ModelError(f"{weights.parent}: the installed weights of backbone {b.name!r} ({backbone.weights_id}) "
                                 f"differ from those the model was trained with ({b.weights_id})")
            _load_tuned(backbone.module, tensors, tuple(b.tuned), weights)
            return backbone
        backbone = build_backbone(b.name, input_size=cfg.preprocess.size, pretrained=False)
    except KeyError as exc:
        raise ModelError(f"{weights.parent}: {exc.args[0]}") from None
    sd = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    try:
        backbone.module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: backbone weights do not fit {b.name!r} ({str(exc).splitlines()[0]})") from None
    backbone.weights_id, backbone.weights_origin = b.weights_id, b.weights_origin
    return backbone


def _load_head(cfg: ModelConfig, feature_dim: int, tensors: dict, weights: Path) -> nn.Module:
    h = cfg.head
    try:
        head = build_head(h.kind, feature_dim, len(cfg.genres), h.hidden, h.dropout, h.members)
    except ValueError as exc:
        raise ModelError(f"{weights.parent / CONFIG_FILE}: {exc}") from None
    head_sd = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    try:
        head.load_state_dict(head_sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: head weights do not fit the config ({str(exc).splitlines()[0]})") from None
    return head


def _load_tuned(module: nn.Module, tensors: dict, tuned: tuple[str, ...], weights: Path) -> None:
    """Overlay the trained blocks stored in the artifact (``backbone.<key>``) on the package weights."""
    sd = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    expected = {k for k in module.state_dict() if k.startswith(tuned)} if tuned else set()
    if set(sd) != expected:
        raise ModelError(f"{weights}: the stored backbone blocks do not match the config's tuned blocks {list(tuned)}")
    if sd:
        try:
            module.load_state_dict(sd, strict=False)
        except RuntimeError as exc:
            raise ModelError(f"{weights}: tuned backbone weights do not fit ({str(exc).splitlines()[0]})") from None


def new_config(backbone: LoadedBackbone, preprocess: Preprocess, genres: Iterable[str], head: HeadConfig,
               mode: str) -> ModelConfig:
    """The config of a model about to be trained; training fills in the rest."""
    spec = get_spec(backbone.spec.name)
    return ModelConfig(
        name=spec.name, genres=list(genres), preprocess=preprocess, mode=mode, head=head,
        backbone=BackboneConfig(
            name=spec.name, weights_origin=backbone.weights_origin, weights_id=backbone.weights_id,
            weight_source=spec.weight_source,
            # Package weights are re-read from the package; anything else travels with the model.
            in_artifact=mode == "finetune" or backbone.weights_origin not in ("package", "none"),
        ),
    )

