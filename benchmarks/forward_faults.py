"""Page faults and kernel time of a bare PyTorch forward loop (the built-in model, batch 32 at 384x256).

    .venv/bin/python benchmarks/forward_faults.py                                  # allocator setting on
    POSTERGENRE_KEEP_FREED_MEMORY=0 .venv/bin/python benchmarks/forward_faults.py  # off

docs/performance.md: 15.9 s wall / 14.4 s sys / 6.8M minor faults off, 5.3 s / 0.0 s on (6 batches, 2 cores).
"""

import os
import resource
import time

import torch

from postergenre.modeling.model import load_model

model = load_model()
x = torch.randn(32, 3, 384, 256).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    model(x)
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.time()
    for _ in range(6):
        model(x)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"keep freed memory={os.environ.get('POSTERGENRE_KEEP_FREED_MEMORY', '1')}: wall {time.time() - t:.2f} s, "
      f"user {r1.ru_utime - r0.ru_utime:.2f} s, sys {r1.ru_stime - r0.ru_stime:.2f} s, minor faults {r1.ru_minflt - r0.ru_minflt}")
