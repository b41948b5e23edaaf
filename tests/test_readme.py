"""The README's Python examples run as written, against the built-in model and the sample
posters (``examples/`` at the repository root links to them)."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

from postergenre.modeling.artifact import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "config.json").is_file(), reason="no built-in default model")


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)


def test_the_first_python_block_runs_from_the_repository_root(monkeypatch, capsys):
    """The one-call pipeline, the README's first example; it writes nothing."""
    blocks = _python_blocks()
    assert blocks and blocks[0].startswith("import postergenre\n"), "README: the pipeline example is missing"
    monkeypatch.chdir(REPO)
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"\[\{'label': '[\w-]+', 'score': 0\.\d+\}", printed), printed
    assert "examples/animation.jpg ['Animation', 'Comedy', 'Adventure']" in printed


def test_the_other_python_blocks_run_as_written(monkeypatch, tmp_path, capsys):
    """In a scratch folder with the same ``examples/`` link, since they write output files."""
    (tmp_path / "examples").symlink_to((REPO / "examples").resolve(), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(_python_blocks()[1:], 2):
        exec(compile(block, f"README.md (python block {i})", "exec"), {})
    assert capsys.readouterr().out
