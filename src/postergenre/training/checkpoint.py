"""Per-epoch training checkpoints: written atomically, resumed exactly.

A checkpoint is a directory ``<root>/epoch-NNNN/``. It holds two files:

- ``tensors.safetensors``: the trained module's weights, the EMA of its weights (when the run
  keeps one), the optimizer's tensors, the RNG states (CUDA's too, when it was used), and the
  best epoch's weights and validation scores.
- ``state.json``: the epoch, the history, the optimizer's settings, the learning-rate
  scheduler's state, the early-stopping counters and the run's fingerprint.

What is saved and restored is the run's :class:`~postergenre.modeling.epochs.Step` (module,
optimizer, scheduler, EMA), so a resumed run equals an uninterrupted one.

Each directory is filled under a temp name and renamed into place (``_io.atomic_directory``),
so a directory named ``epoch-NNNN`` is always complete. Older ones are deleted only after the
new one has landed. No pickle is written or read. A checkpoint from a different run (recipe,
data, split) is refused rather than mixed in.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

_EPOCH_DIR = re.compile(r"^epoch-(\d{4,})$")


class Checkpoints:
    def __init__(self, root: str | Path, fingerprint: str, writer: bool = True):
        # Under torchrun every rank restores, only rank 0 (the writer) saves and clears.
        self.root, self.fingerprint, self.writer = Path(root), fingerprint, writer

    def _dirs(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _EPOCH_DIR.match(p.name)) and p.is_dir()]
        return sorted(found)

    def save(self, epoch: int, step, gen: torch.Generator, keeper, history, stopped: bool) -> None:
        """Checkpoint ``step`` (:class:`~postergenre.modeling.epochs.Step`) after ``epoch``."""
        from safetensors.torch import save_file

        if not self.writer:
            return
        from .._io import atomic_directory

        tensors = _tensors("module.", step.module.state_dict())
        if step.ema is not None:
            tensors |= _tensors("ema.", step.ema.state_dict())
        opt_sd = step.opt.state_dict()
        opt_meta: dict[str, dict] = {}
        for idx, st in opt_sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
                else:
                    opt_meta.setdefault(str(idx), {})[k] = v
            opt_meta.setdefault(str(idx), {})
        tensors["rng.gen"] = gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        if keeper.state is not None:
            tensors.update({f"best.{k}": v.contiguous() for k, v in keeper.state.items()})
            tensors["best_scores"] = torch.as_tensor(np.ascontiguousarray(keeper.scores))
        state = {
            "fingerprint": self.fingerprint, "epoch": epoch, "stopped": stopped,
            "optimizer": {"param_groups": opt_sd["param_groups"], "state": opt_meta},
            "scheduler": step.sched.state_dict() if step.sched is not None else None,
            "keeper": {"best": keeper.best, "stale": keeper.stale, "has_best": keeper.state is not None},
            "history": {"epochs": history.epochs, "iterations": history.iterations},
        }

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp / "tensors.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state))

        atomic_directory(self.root / f"epoch-{epoch:04d}", write)
        for e, p in self._dirs():
            if e < epoch:
                _remove(p)

    def restore(self, step, gen: torch.Generator, keeper, history) -> tuple[int, bool]:
        """Load the newest checkpoint into ``step`` and the others; (epochs done, stopped early). (0, False) if none."""
        state, tensors = self._newest()
        if state is None:
            return 0, False
        step.module.load_state_dict(_prefixed("module.", tensors))
        if step.ema is not None:
            step.ema.load_state_dict(_prefixed("ema.", tensors))
        opt_state = {}
        for idx, meta in state["optimizer"]["state"].items():
            st = dict(meta)
            st.update(_prefixed(f"opt.{idx}.", tensors))
            opt_state[int(idx)] = st
        step.opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
        if step.sched is not None and state["scheduler"] is not None:
            step.sched.load_state_dict(state["scheduler"])
        gen.set_state(tensors["rng.gen"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        k = state["keeper"]
        keeper.best, keeper.stale = k["best"], k["stale"]
        if k["has_best"]:
            keeper.state = _prefixed("best.", tensors)
            keeper.scores = tensors["best_scores"].numpy()
        history.epochs, history.iterations = state["history"]["epochs"], state["history"]["iterations"]
        return state["epoch"], state["stopped"]

    def _newest(self) -> tuple[dict | None, dict]:
        from safetensors.torch import load_file

        dirs = self._dirs()
        if not dirs:
            return None, {}
        path = dirs[-1][1]
        try:
            state = json.loads((path / "state.json").read_text())
            tensors = load_file(str(path / "tensors.safetensors"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: damaged checkpoint ({exc}); delete {self.root} to start over") from None
        if state.get("fingerprint") != self.fingerprint:
            raise UsageError(f"{self.root}: the checkpoints are from a different run (recipe, data or split); "
                             "delete them or train without --resume")
        return state, tensors

    def clear(self) -> None:
        if self.writer and self.root.exists():
            _remove(self.root)


def _tensors(prefix: str, state_dict: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in state_dict.items()}


def _prefixed(prefix: str, tensors: dict) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _remove(path: Path) -> None:
    """Rename out of the way first (atomic), then delete: a kill mid-delete leaves only a dot-name."""
    trash = path.parent / f".{path.name}.deleting-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
