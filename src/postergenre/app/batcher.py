"""One forward pass for many requests: the API's inference thread and its queue.

Concurrent requests each hand over their decoded posters; the one inference thread takes
everything waiting (in order) and scores it in passes of at most ``max_batch`` posters, so 16
clients sending one poster each cost two passes of 8, not 16 passes of 1. On 2 cores a pass of
8 runs as fast per poster as one of 32 in a third of the memory (docs/performance.md), hence
the default.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable

import numpy as np

DEFAULT_MAX_BATCH = 8


class Batcher:
    """``score(pixels (N, H, W, 3) uint8) -> (N, G)`` run in a daemon thread on batches of requests."""

    def __init__(self, score: Callable[[np.ndarray], np.ndarray], max_batch: int = DEFAULT_MAX_BATCH, name: str = "postergenre-infer"):
        self._score, self.max_batch = score, max_batch
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.passes = 0  # forward passes run
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self._thread.start()

    def submit(self, pixels: np.ndarray) -> Future:
        """A future of the scores ``(N, G)`` of ``pixels`` ``(N, H, W, 3)``."""
        done: Future = Future()
        self._jobs.put((pixels, done))
        return done

    def close(self) -> None:
        self._jobs.put(None)

    def _waiting(self, first) -> list:
        jobs, n = [first], len(first[0])
        while n < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # seen again once this batch is answered
                break
            jobs.append(job)
            n += len(job[0])
        return jobs

    def _loop(self) -> None:
        while (first := self._jobs.get()) is not None:
            jobs = self._waiting(first)
            try:
                pixels = np.concatenate([p for p, _ in jobs])
                scores = np.concatenate([self._score(pixels[i:i + self.max_batch]) for i in range(0, len(pixels), self.max_batch)])
                self.passes += -(-len(pixels) // self.max_batch)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the thread lives on
                for _, done in jobs:
                    done.set_exception(exc)
                continue
            start = 0
            for p, done in jobs:
                done.set_result(scores[start:start + len(p)])
                start += len(p)
