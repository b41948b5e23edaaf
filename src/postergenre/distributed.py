"""Running under ``torchrun``: PyTorch's own ``torch.distributed``, nothing home-made.

``setup()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...)
and joins the process group: NCCL when the process has a GPU, Gloo on CPU. Without torchrun
(or with one process) it returns a single-process :class:`Dist` and nothing changes.

The conventions the rest of the package relies on:

- Every rank computes the same split and the same seeds, from the recipe alone.
- Work on a list is split by position: rank ``r`` of ``w`` takes items ``r, r + w, r + 2w, ...``.
- Only rank 0 writes what the user keeps (model directory, history, merged outputs).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import UsageError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch

            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects; tensors/arrays included)."""
        if not self.enabled:
            return [obj]
        import torch

        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def shard(self, items: Sequence) -> list:
        return list(items[self.rank::self.world_size])


SINGLE = Dist()


def setup(device: str = "auto") -> Dist:
    """Join torchrun's process group if there is one (idempotent); else the single-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE  # torch is not even imported: the one-poster command stays light
    import torch

    if not torch.distributed.is_available():
        return SINGLE
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def teardown() -> None:
    torch = sys.modules.get("torch")  # no torch imported: no process group to leave
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like I/N (e.g. 0/4), not {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard {text}: need 0 <= I < N")
    return i, n
