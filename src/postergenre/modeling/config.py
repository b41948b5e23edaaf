"""What a model is, as typed records: :class:`ModelConfig` (read by every scorer) and
:class:`TrainingRecord` (how it was made and how well it did).

``config.json`` is ``ModelConfig.to_dict()``; every reader and writer goes through
:meth:`ModelConfig.from_dict` / :meth:`ModelConfig.to_dict`. The JSON layout is format 1, the
same flat layout older versions wrote, so their model directories load unchanged; keys this
version does not know are kept (``extra``) and written back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..data.images import Preprocess
from ..errors import ModelError
from .decision import DecisionRule

FORMAT_VERSION = 1


@dataclass
class BackboneConfig:
    """Which backbone, and where its weights come from (the package, or the artifact itself)."""

    name: str
    weights_origin: str  # "package", "file:<path>", "hub", "random init", "none", "artifact"
    weights_id: str  # fingerprint of the pretrained weights the model was trained from
    weight_source: str  # human-readable
    in_artifact: bool  # True: model.safetensors holds the whole backbone
    tuned: list[str] = field(default_factory=list)  # state-dict prefixes stored on top of package weights
    tail_blocks: int | None = None  # mode tail: how many blocks were tuned


@dataclass
class HeadConfig:
    kind: str  # see model.HEADS
    hidden: int = 0
    dropout: float = 0.0
    members: int = 1  # > 1: an ensemble (mean of logits)


@dataclass
class TrainingRecord:
    """How the model was trained and how it scored; ``None`` fields were not recorded."""

    recipe: dict = field(default_factory=dict)  # train.Recipe as a dict
    data: dict = field(default_factory=dict)  # sources, counts, split fingerprint
    validation_metrics: dict = field(default_factory=dict)
    validation_metrics_thresholds: dict = field(default_factory=dict)
    validation_metrics_uncalibrated: dict = field(default_factory=dict)
    test_metrics: dict | None = None
    test_metrics_thresholds: dict | None = None
    training_seconds: float | None = None
    feature_extraction_seconds: float | None = None
    command: str | None = None  # the command line that trained it, when it came from the CLI


_RECORD_KEYS = tuple(f.name for f in fields(TrainingRecord))


@dataclass
class ModelConfig:
    """Everything needed to rebuild and use a model. An exported ``.onnx`` file carries the
    scoring part (``backbone``/``head`` are ``None`` there)."""

    name: str
    genres: list[str]
    preprocess: Preprocess
    decision: DecisionRule = field(default_factory=DecisionRule)
    mode: str = "frozen"  # frozen | tail | finetune | onnx
    backbone: BackboneConfig | None = None
    head: HeadConfig | None = None
    calibration: dict | None = None  # calibration.Calibration.to_dict(); None: raw sigmoid
    text: dict | None = None  # text.branch.TextBranch.config(): OCR settings, encoders, fusion; None: image only
    int8: dict | None = None  # inference.int8: calibration ranges file, quantized blocks, measured figures; None: no int8 engine
    training: TrainingRecord | None = None
    weights_sha256: str | None = None
    package_version: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # keys of newer versions, kept as they are

    @property
    def calibrated(self) -> bool:
        return (self.calibration or {}).get("kind", "identity") != "identity"

    def to_dict(self) -> dict:
        out = {"format_version": self.format_version, "name": self.name, "mode": self.mode}
        if self.backbone is not None:
            b = asdict(self.backbone)
            out["backbone"] = {k: v for k, v in b.items() if v is not None and v != []}  # older layouts had neither
        out["preprocess"] = self.preprocess.to_dict()
        if self.head is not None:
            h = asdict(self.head)
            out["head"] = {k: v for k, v in h.items() if k != "members" or v > 1}
        out["genres"] = list(self.genres)
        out["decision"] = self.decision.to_dict()
        if self.calibration is not None:
            out["calibration"] = self.calibration
        if self.text is not None:
            out["text"] = self.text
        if self.int8 is not None:
            out["int8"] = self.int8
        if self.training is not None:
            out.update({k: v for k, v in asdict(self.training).items() if v not in (None, {})})
        for key in ("weights_sha256", "package_version"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out | self.extra

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
        """Read a config dict (``config.json`` or an export's metadata); :class:`ModelError`
        naming ``source`` when it is not one."""
        if not isinstance(d, dict):
            raise ModelError(f"{source}: not a model config (a JSON object was expected)")
        try:
            training = {k: d[k] for k in _RECORD_KEYS if k in d}
            known = {"format_version", "name", "mode", "backbone", "preprocess", "head", "genres", "decision",
                     "calibration", "text", "int8", "weights_sha256", "package_version", "fingerprint", *_RECORD_KEYS}
            return cls(
                name=d.get("name") or d["backbone"]["name"],
                genres=list(d["genres"]),
                preprocess=Preprocess.from_dict(d["preprocess"]),
                decision=DecisionRule(**d["decision"]) if d.get("decision") else DecisionRule(),
                mode=d.get("mode", "frozen"),
                backbone=BackboneConfig(**d["backbone"]) if d.get("backbone") else None,
                head=HeadConfig(**d["head"]) if d.get("head") else None,
                calibration=d.get("calibration"),
                text=d.get("text"),
                int8=d.get("int8"),
                training=TrainingRecord(**training) if training else None,
                weights_sha256=d.get("weights_sha256"),
                package_version=d.get("package_version"),
                format_version=d.get("format_version", FORMAT_VERSION),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: malformed model config ({type(exc).__name__}: {exc})") from None

    def export_metadata(self, fingerprint: str) -> dict:
        """The scoring part, stored in an ONNX export so the file works without its folder."""
        return {"format_version": self.format_version, "name": self.name, "genres": list(self.genres),
                "preprocess": self.preprocess.to_dict(), "decision": self.decision.to_dict(),
                "weights_sha256": self.weights_sha256, "calibration": self.calibration, "fingerprint": fingerprint,
                "input": "RGB, resized to preprocess.size (height, width) without keeping the aspect ratio, "
                         "scaled to [0, 1], then (x - mean) / std; NCHW float32"}


class ConfigAccessors:
    """What every scorer (PyTorch model, ONNX Runtime model) reads from its :class:`ModelConfig`."""

    config: ModelConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def genres(self) -> list[str]:
        return list(self.config.genres)

    @property
    def preprocess(self) -> Preprocess:
        return self.config.preprocess

    @property
    def decision(self) -> DecisionRule:
        return self.config.decision

    @property
    def calibrated(self) -> bool:
        """Whether the scores are calibrated probabilities (not raw sigmoid outputs)."""
        return self.config.calibrated

    def decision_rule(self, kind: str | None = None, k: int | None = None) -> DecisionRule:
        """The model's rule, with ``kind``/``k`` overridden where given."""
        d = self.config.decision
        return DecisionRule(kind or d.kind, k or d.k, d.thresholds)
