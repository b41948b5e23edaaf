"""Per-epoch training checkpoints: written atomically, resumed exactly.

A checkpoint is a directory ``<root>/epoch-NNNN/``. It holds two files:

- ``tensors.safetensors``: the trained module's weights, the optimizer's tensors, the RNG states,
  and the best epoch's weights and validation scores.
- ``state.json``: the epoch, the history, the optimizer's settings, the scheduler, the
  early-stopping counters and the run's fingerprint.

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

    def save(self, epoch: int, module, opt, sched, gen: torch.Generator, keeper, history, stopped: bool) -> None:
        from safetensors.torch import save_file

        if not self.writer:
            return
        from .._io import atomic_directory

        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        opt_sd = opt.state_dict()
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
        if keeper.state is not None:
            tensors.update({f"best.{k}": v.contiguous() for k, v in keeper.state.items()})
            tensors["best_scores"] = torch.as_tensor(np.ascontiguousarray(keeper.scores))
        state = {
            "fingerprint": self.fingerprint, "epoch": epoch, "stopped": stopped,
            "optimizer": {"param_groups": opt_sd["param_groups"], "state": opt_meta},
            "scheduler": sched.state_dict() if sched is not None else None,
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

    def restore(self, module, opt, sched, gen: torch.Generator, keeper, history) -> tuple[int, bool]:
        """Load the newest checkpoint into the given objects; (epochs done, stopped early). (0, False) if none."""
        from safetensors.torch import load_file

        dirs = self._dirs()
        if not dirs:
            return 0, False
        path = dirs[-1][1]
        try:
            state = json.loads((path / "state.json").read_text())
            tensors = load_file(str(path / "tensors.safetensors"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: damaged checkpoint ({exc}); delete {self.root} to start over") from None
        if state.get("fingerprint") != self.fingerprint:
            raise UsageError(f"{self.root}: the checkpoints are from a different run (recipe, data or split); "
                             "delete them or train without --resume")
        module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
        opt_state = {}
        for idx, meta in state["optimizer"]["state"].items():
            st = dict(meta)
            prefix = f"opt.{idx}."
            st.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            opt_state[int(idx)] = st
        opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
        if sched is not None and state["scheduler"] is not None:
            sched.load_state_dict(state["scheduler"])
        gen.set_state(tensors["rng.gen"])
        torch.set_rng_state(tensors["rng.torch"])
        k = state["keeper"]
        keeper.best, keeper.stale = k["best"], k["stale"]
        if k["has_best"]:
            keeper.state = {key[len("best."):]: v for key, v in tensors.items() if key.startswith("best.")}
            keeper.scores = tensors["best_scores"].numpy()
        history.epochs, history.iterations = state["history"]["epochs"], state["history"]["iterations"]
        return state["epoch"], state["stopped"]

    def clear(self) -> None:
        if self.writer and self.root.exists():
            _remove(self.root)


def _remove(path: Path) -> None:
    """Rename out of the way first (atomic), then delete: a kill mid-delete leaves only a dot-name."""
    trash = path.parent / f".{path.name}.deleting-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
