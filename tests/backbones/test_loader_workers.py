"""The DataLoader's decoding workers start from a fork server (issue 27): never forked from a
process whose other threads (a progress bar's monitor, ONNX Runtime's pool) may hold a lock."""

from __future__ import annotations

import numpy as np

from postergenre.backbones.features import make_loader
from postergenre.data.images import Preprocess

from conftest import make_poster


def test_loader_workers_start_from_a_fork_server_and_keep_the_order(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        make_poster(rng, {"Action"} if i % 2 else {"Drama"}).save(tmp_path / f"{i}.jpg")
        paths.append(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    pre = Preprocess((64, 48), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    loader = make_loader([*paths, tmp_path / "bad.jpg"], pre, batch_size=2, workers=2)
    assert loader.loader.multiprocessing_context.get_start_method() == "forkserver"
    batches = list(loader)
    assert [i for idx, _, _ in batches for i in idx] == list(range(6))
    assert {i for _, _, errors in batches for i in errors} == {6}
    one = next(iter(make_loader(paths[:2], pre, batch_size=2, workers=0)))[1]
    assert np.array_equal(batches[0][1].numpy(), one.numpy())
