"""Issue 27: the README's sample outputs (``$ .venv/bin/postergenre ...`` and the lines under it)
are what the default engine prints. Its int8 plan, so its last digits, depends on the CPU: the
samples are those of a CPU with VNNI."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO, run

from postergenre.inference.int8 import cpu_has_vnni

SAMPLES = re.findall(r"^\$ \.venv/bin/postergenre ([^\n]*)\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)


def test_the_readme_has_the_samples():
    assert [cmd for cmd, _ in SAMPLES] == ["predict examples/", "predict examples/horror.jpg examples/scifi.jpg --text on"]


@pytest.mark.skipif(not cpu_has_vnni(), reason="the README's samples are the int8 engine's VNNI plan")
@pytest.mark.parametrize("command,printed", SAMPLES, ids=[cmd for cmd, _ in SAMPLES])
def test_the_readme_samples_are_what_the_default_engine_prints(command, printed, monkeypatch):
    monkeypatch.chdir(REPO)
    res = run(*shlex.split(command))
    assert res.exit_code == 0, res.output
    assert res.stdout == printed
