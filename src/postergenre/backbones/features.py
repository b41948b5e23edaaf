"""Frozen feature extraction with an on-disk cache.

Features are keyed by (backbone, weights fingerprint, preprocessing, flip) and by each image's
content hash, so renaming or moving posters keeps the cache valid and a changed image is
re-extracted. The cache is filled incrementally in chunk files, each written atomically: an
interrupted extraction keeps every finished chunk and never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.images import ImageLoadError, Preprocess, decode_for_model, file_digest
from .._io import default_cache_dir, worker_context  # noqa: F401 - default_cache_dir re-exported
from .registry import LoadedBackbone

CHUNK = 512  # images per cache file


class _Files(Dataset):
    """Reads and decodes image files to resized uint8 pixels; a bad file yields its error instead."""

    def __init__(self, paths: Sequence[str | Path], preprocess: Preprocess, flip: bool = False):
        self.paths, self.preprocess, self.flip = list(paths), preprocess, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x, error = decode_for_model(self.paths[i], self.preprocess, self.flip)
        return i, None if x is None else torch.from_numpy(x), error


def make_loader(paths, preprocess: Preprocess, batch_size: int, workers: int | None = None, flip: bool = False,
                sampler=None) -> DataLoader:
    """Batches of ``(indices, float32 tensor (B,3,H,W) or None, {index: error})`` in input order
    (or in ``sampler``'s order, e.g. a DistributedSampler's share); indices refer to ``paths``."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(paths) > batch_size else 0
    loader = DataLoader(_Files(paths, preprocess, flip), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_pixels, persistent_workers=False, sampler=sampler,
                        multiprocessing_context=worker_context() if workers else None)
    return _Normalized(loader, preprocess)


def _collate_pixels(items):
    ok = [(i, x) for i, x, err in items if err is None]
    return [i for i, _ in ok], torch.stack([x for _, x in ok]) if ok else None, {i: e for i, _, e in items if e is not None}


class _Normalized:
    """A DataLoader whose workers send uint8 pixels (4x less shared memory to map and fault in
    than float32); the batch is normalised here, in the main process."""

    def __init__(self, loader: DataLoader, preprocess: Preprocess):
        self.loader, self.preprocess = loader, preprocess

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for idx, pixels, errors in self.loader:
            yield idx, None if pixels is None else self.preprocess.normalize_batch(pixels), errors


def extract_features_sharded(backbone: LoadedBackbone, paths: Sequence[str | Path], preprocess: Preprocess, dist,
                             cache_dir=None, device: str = "cpu", progress: bool = True,
                             split: int | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """:func:`extract_features` with the posters split across the ranks of ``dist`` (a
    :class:`~postergenre.distributed.Dist`) and the results gathered, so every rank gets them all."""
    if not dist.enabled:
        return extract_features(backbone, paths, preprocess, cache_dir, device=device, progress=progress, split=split)
    paths = list(paths)
    mine = np.arange(len(paths))[dist.rank::dist.world_size]
    feats, errors = extract_features(backbone, [paths[i] for i in mine], preprocess, cache_dir, device=device,
                                     progress=progress and dist.is_main, split=split)
    out = np.zeros((len(paths), feats.shape[1]), dtype=feats.dtype)
    all_errors: dict[int, str] = {}
    for idx, f, errs in dist.all_gather((mine, feats, {int(mine[k]): v for k, v in errors.items()})):
        out[idx] = f
        all_errors.update(errs)
    return out, all_errors


class FeatureCache:
    """Directory of chunk files ``<dir>/<key>/<uuid>.npz`` holding ``digests`` and ``features``."""

    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root) / key
        self._index: dict[str, np.ndarray] | None = None

    @staticmethod
    def key_for(backbone: LoadedBackbone, preprocess: Preprocess, flip: bool = False, split: int | None = None) -> str:
        desc = {"backbone": backbone.spec.name, "pooling": backbone.spec.pooling, "weights": backbone.weights_id,
                "preprocess": preprocess.to_dict(), "flip": flip, "format": 1}
        if split is not None:  # tail rows (see embed_rows); the plain feature key stays as it was
            desc["split"] = split
        return f"{backbone.spec.name}-{hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]}"

    def load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            for f in sorted(self.dir.glob("*.npz")) if self.dir.is_dir() else []:
                try:
                    with np.load(f) as z:
                        for d, row in zip(z["digests"], z["features"]):
                            self._index[str(d)] = row
                except Exception:  # noqa: BLE001 - a damaged chunk is skipped and recomputed
                    continue
        return self._index

    def add(self, digests: list[str], features: np.ndarray) -> None:
        if not digests:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = self.dir / f".{name}.tmp.npz"
        np.savez(tmp, digests=np.asarray(digests), features=features)
        os.replace(tmp, self.dir / f"{name}.npz")
        index = self.load()
        for d, row in zip(digests, features):
            index[d] = row


class TailRows(nn.Module):
    """Images -> one row per poster for training the last blocks (mode "tail"):
    ``[feature map before block split (C*H*W), trunk tap stats, full pooled features]``.
    The full features let a head be fitted first, as in frozen mode, before the tail is tuned."""

    def __init__(self, module: nn.Module, split: int):
        super().__init__()
        self.module, self.split = module, split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, pooled = self.module.trunk(x, self.split)
        full = self.module.tail(h, pooled, self.split)
        return torch.cat([h.flatten(1), *pooled, full], dim=1)


def row_layout(backbone: LoadedBackbone, preprocess: Preprocess, split: int | None) -> dict:
    """Widths of a cached row: ``{"dim", "map" (C, H, W) or None, "stats", "features"}``."""
    if split is None:
        return {"dim": backbone.feature_dim, "map": None, "stats": 0, "features": backbone.feature_dim}
    with torch.inference_mode():
        h, pooled = backbone.module.trunk(torch.zeros(1, 3, *preprocess.size), split)
    stats = sum(p.shape[1] for p in pooled)
    return {"dim": h[0].numel() + stats + backbone.feature_dim, "map": tuple(h.shape[1:]), "stats": stats,
            "features": backbone.feature_dim}


class Embedder:
    """Preprocessed batch ``(B, 3, H, W)`` -> rows ``(B, D)`` float32, with PyTorch or ONNX Runtime.

    ONNX Runtime runs the mobile backbones ~4x faster than eager PyTorch on CPU. The export is
    made once per cache key (``<cache>/onnx/embed-<key>.onnx``) and checked against PyTorch on
    its first batch; where it cannot be made or differs by more than ``atol`` (times the largest
    value, when that is above 1), PyTorch is used.
    """

    def __init__(self, module: nn.Module, engine: str = "auto", device: str = "cpu", onnx_path: Path | None = None,
                 atol: float = 1e-4):
        self.module, self.device, self.atol = module.to(device).eval(), device, atol
        self.engine = "torch" if engine == "torch" or device != "cpu" or onnx_path is None else "onnx"
        self.onnx_path, self.session = onnx_path, None
        self.must_onnx = engine == "onnx"

    @torch.inference_mode()
    def _torch(self, batch: torch.Tensor) -> np.ndarray:
        return self.module(batch.to(self.device).contiguous(memory_format=torch.channels_last)).float().cpu().numpy()

    def _start_onnx(self, batch: torch.Tensor) -> None:
        import onnxruntime as ort

        from .._export import export_module

        try:
            expected = self._torch(batch)
            if not self.onnx_path.is_file():
                export_module(self.module, batch[:1], self.onnx_path)
            session = ort.InferenceSession(str(self.onnx_path), providers=["CPUExecutionProvider"])
            diff = float(np.abs(session.run(None, {"image": batch.numpy()})[0] - expected).max())
            scale = max(1.0, float(np.abs(expected).max()))  # feature maps reach ~60: compare relative to that
            if not diff <= self.atol * scale:
                raise RuntimeError(f"ONNX Runtime features differ from PyTorch's by {diff:.1e} (scale {scale:.0f})")
            self.session = session
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to the reference engine
            if self.must_onnx:
                raise
            import warnings

            warnings.warn(f"feature extraction falls back to PyTorch: {exc}", stacklevel=3)
            self.engine = "torch"

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        if self.engine == "onnx" and self.session is None:
            self._start_onnx(batch)
        if self.engine == "onnx":
            return self.session.run(None, {"image": np.ascontiguousarray(batch.numpy())})[0]
        return self._torch(batch)


def embed_batch(backbone: LoadedBackbone, batch: torch.Tensor, device: str = "cpu") -> np.ndarray:
    return Embedder(backbone.module, "torch", device)(batch)


def extract_features(
    backbone: LoadedBackbone,
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    flip: bool = False,
    progress: bool = True,
    engine: str = "auto",
    split: int | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Features ``(N, D)`` float32 for ``paths`` (rows of unreadable files are zero) and
    ``{index: error message}`` for the files that could not be read.

    ``split``: instead of pooled features, the float16 rows of :class:`TailRows` (feature map
    before block ``split``, tap stats, pooled features; widths from :func:`row_layout`).
    ``engine``: auto (ONNX Runtime on CPU, checked against PyTorch), torch or onnx.
    """
    paths = list(paths)
    root = Path(cache_dir or default_cache_dir())
    key = FeatureCache.key_for(backbone, preprocess, flip, split)
    cache = FeatureCache(root, key)
    index = cache.load()
    layout = row_layout(backbone, preprocess, split)
    dtype = np.float32 if split is None else np.float16
    digests: list[str | None] = []
    errors: dict[int, str] = {}
    for i, p in enumerate(paths):
        try:
            digests.append(file_digest(Path(p).read_bytes()))
        except OSError as exc:
            digests.append(None)
            errors[i] = str(ImageLoadError(p, f"cannot read file ({exc.strerror or exc})"))
    todo = [i for i, d in enumerate(digests) if d is not None and d not in index]
    if todo:
        from tqdm.auto import tqdm

        module = backbone.module if split is None else TailRows(backbone.module, split)
        embed = Embedder(module, engine, device, root / "onnx" / f"embed-{key}.onnx")
        bar = tqdm(total=len(todo), desc=f"features {backbone.spec.name}", unit="img", disable=not progress)
        pending_d: list[str] = []
        pending_f: list[np.ndarray] = []
        for idx, batch, errs in make_loader([paths[i] for i in todo], preprocess, batch_size, flip=flip):
            for j, err in errs.items():
                errors[todo[j]] = err
            if batch is not None:
                pending_d += [digests[todo[j]] for j in idx]
                pending_f.append(embed(batch).astype(dtype))
            if len(pending_d) >= CHUNK:
                cache.add(pending_d, np.concatenate(pending_f))
                pending_d, pending_f = [], []
            bar.update(len(idx) + len(errs))
        cache.add(pending_d, np.concatenate(pending_f) if pending_f else np.zeros((0, layout["dim"]), dtype))
        bar.close()
    out = np.zeros((len(paths), layout["dim"]), dtype=dtype)
    for i, d in enumerate(digests):
        if i not in errors and d in index:
            out[i] = index[d]
    return out, errors
