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
from torch.utils.data import DataLoader, Dataset

from .backbones import LoadedBackbone
from .images import ImageLoadError, Preprocess

CHUNK = 512  # images per cache file


def default_cache_dir() -> Path:
    return Path(os.environ.get("POSTERGENRE_CACHE", Path.home() / ".cache" / "postergenre"))


def file_digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class _Files(Dataset):
    """Reads, hashes and preprocesses image files; a bad file yields its error instead."""

    def __init__(self, paths: Sequence[str | Path], preprocess: Preprocess, flip: bool = False):
        self.paths, self.preprocess, self.flip = list(paths), preprocess, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            data = Path(path).read_bytes()
            x = self.preprocess.load(data, name=str(path))
            if self.flip:
                x = x.flip(-1)
            return i, x, None
        except ImageLoadError as exc:
            return i, None, str(exc)
        except OSError as exc:
            return i, None, str(ImageLoadError(path, f"cannot read file ({exc.strerror or exc})"))


def _collate(items):
    ok = [(i, x) for i, x, err in items if err is None]
    errors = {i: err for i, _, err in items if err is not None}
    idx = [i for i, _ in ok]
    batch = torch.stack([x for _, x in ok]) if ok else None
    return idx, batch, errors


def make_loader(paths, preprocess: Preprocess, batch_size: int, workers: int | None = None, flip: bool = False,
                sampler=None) -> DataLoader:
    """Batches of ``(indices, tensor (B,3,H,W) or None, {index: error})`` in input order
    (or in ``sampler``'s order, e.g. a DistributedSampler's share); indices refer to ``paths``."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(paths) > batch_size else 0
    return DataLoader(
        _Files(paths, preprocess, flip), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, persistent_workers=False, sampler=sampler,
    )


def extract_features_sharded(backbone: LoadedBackbone, paths: Sequence[str | Path], preprocess: Preprocess, dist,
                             cache_dir=None, device: str = "cpu", progress: bool = True) -> tuple[np.ndarray, dict[int, str]]:
    """:func:`extract_features` with the posters split across the ranks of ``dist`` (a
    :class:`~postergenre.distributed.Dist`) and the results gathered, so every rank gets them all."""
    if not dist.enabled:
        return extract_features(backbone, paths, preprocess, cache_dir, device=device, progress=progress)
    paths = list(paths)
    mine = np.arange(len(paths))[dist.rank::dist.world_size]
    feats, errors = extract_features(backbone, [paths[i] for i in mine], preprocess, cache_dir, device=device,
                                     progress=progress and dist.is_main)
    out = np.zeros((len(paths), backbone.feature_dim), dtype=np.float32)
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
    def key_for(backbone: LoadedBackbone, preprocess: Preprocess, flip: bool = False) -> str:
        desc = json.dumps(
            {"backbone": backbone.spec.name, "pooling": backbone.spec.pooling, "weights": backbone.weights_id,
             "preprocess": preprocess.to_dict(), "flip": flip, "format": 1},
            sort_keys=True,
        )
        return f"{backbone.spec.name}-{hashlib.sha256(desc.encode()).hexdigest()[:16]}"

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
        np.savez(tmp, digests=np.asarray(digests), features=features.astype(np.float32))
        os.replace(tmp, self.dir / f"{name}.npz")
        index = self.load()
        for d, row in zip(digests, features):
            index[d] = row


@torch.inference_mode()
def embed_batch(backbone: LoadedBackbone, batch: torch.Tensor, device: str = "cpu") -> np.ndarray:
    x = batch.to(device).contiguous(memory_format=torch.channels_last)
    return backbone.module.to(device)(x).float().cpu().numpy()


def extract_features(
    backbone: LoadedBackbone,
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    flip: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, dict[int, str]]:
    """Features ``(N, D)`` float32 for ``paths`` (rows of unreadable files are zero) and
    ``{index: error message}`` for the files that could not be read."""
    paths = list(paths)
    cache = FeatureCache(cache_dir or default_cache_dir(), FeatureCache.key_for(backbone, preprocess, flip))
    index = cache.load()
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

        bar = tqdm(total=len(todo), desc=f"features {backbone.spec.name}", unit="img", disable=not progress)
        pending_d: list[str] = []
        pending_f: list[np.ndarray] = []
        for idx, batch, errs in make_loader([paths[i] for i in todo], preprocess, batch_size, flip=flip):
            for j, err in errs.items():
                errors[todo[j]] = err
            if batch is not None:
                pending_d += [digests[todo[j]] for j in idx]
                pending_f.append(embed_batch(backbone, batch, device))
            if len(pending_d) >= CHUNK:
                cache.add(pending_d, np.concatenate(pending_f))
                pending_d, pending_f = [], []
            bar.update(len(idx) + len(errs))
        cache.add(pending_d, np.concatenate(pending_f) if pending_f else np.zeros((0, backbone.feature_dim)))
        bar.close()
    out = np.zeros((len(paths), backbone.feature_dim), dtype=np.float32)
    for i, d in enumerate(digests):
        if i not in errors and d in index:
            out[i] = index[d]
    return out, errors
