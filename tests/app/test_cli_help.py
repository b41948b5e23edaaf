"""The help pages and option spelling of ``postergenre``: -h everywhere, --version, every option
explained, metavars instead of typer's <type> labels, choices listed and forgiving of case and -/_."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

import postergenre
from postergenre.app import _clikit
from postergenre.app.cli import app

from conftest import run


def commands() -> dict[str, object]:
    """'predict' -> its click command, 'data check' -> ..., '' -> the group itself."""
    group = typer.main.get_command(app)
    found = {"": group}
    for name, cmd in group.commands.items():
        found[name] = cmd
        for sub, subcmd in getattr(cmd, "commands", {}).items():
            found[f"{name} {sub}"] = subcmd
    return found


def help_page(*words: str) -> str:
    res = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "220", "TERMINAL_WIDTH": "220"})
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_help_page_answers_to_h_and_reads_cleanly(name):
    words = name.split()
    page = help_page(*words)
    short = CliRunner().invoke(app, [*words, "-h"], env={"COLUMNS": "220", "TERMINAL_WIDTH": "220"})
    assert short.exit_code == 0 and short.stdout == page
    assert not re.search(r"<(bool|int|float|text|path|str)>", page), page  # typer's type labels
    usage = next(line for line in page.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage  # PATHS..., not typer's {paths}...


def test_every_option_and_argument_is_explained():
    for name, cmd in commands().items():
        for param in cmd.params:
            assert getattr(param, "help", None), f"{name or 'postergenre'} {param.name}: no help text"


def test_usage_metavars_and_choices_in_help():
    page = help_page("predict")
    assert "Usage: root predict [OPTIONS] PATHS..." in page  # CliRunner names the program "root"
    for shown in ("[top_k|thresholds]", "[table|json|csv|jsonl]", "[auto|torch|onnx|int8]", "--batch-size", "--device",
                  "--quiet", "--force", "FILE", "I/N", "--help"):
        assert shown in page, shown
    assert "MODEL" in help_page("export") and "Model directory" in help_page("export")
    assert "Dataset folder" in help_page("evaluate") and "DIR" in help_page("evaluate")
    assert "[frozen|tail|finetune]" in help_page("train")
    assert "Usage: root merge [OPTIONS] FILE" in help_page("merge")


def test_version():
    for flag in ("--version", "-V"):
        res = run(flag)
        assert res.exit_code == 0 and res.stdout.strip() == f"postergenre {postergenre.__version__}"


def test_the_choices_shown_are_the_librarys():
    from postergenre.modeling import decision, losses, model
    from postergenre.inference import formats, scorer
    from postergenre.training import recipe

    assert _clikit.DECISIONS == decision.DECISIONS
    assert _clikit.PREDICTION_FORMATS == tuple(formats.PREDICTION_FORMATS)
    assert _clikit.METRICS_FORMATS == tuple(formats.METRICS_FORMATS)
    assert _clikit.ENGINES == scorer.ENGINES
    assert (_clikit.MODES, _clikit.CALIBRATIONS) == (recipe.MODES, recipe.CALIBRATIONS)
    assert _clikit.HEADS == tuple(model.HEADS) and _clikit.LOSSES == tuple(losses.LOSSES)


@pytest.mark.parametrize("spelling", ["top-k", "TOP_K", "Top-K", " top_k "])
def test_choices_forgive_case_and_dashes(spelling):
    assert _clikit.canonical(spelling, _clikit.DECISIONS, "decision") == "top_k"


def test_choice_variants_give_the_same_predictions(tiny_model, poster_dir):
    base = run("predict", poster_dir, "--model", tiny_model, "--engine", "torch", "--format", "json")
    alt = run("predict", poster_dir, "--model", tiny_model, "--engine", "TORCH", "--format", "JSON", "--decision", "top-k")
    assert base.exit_code == alt.exit_code == 0, alt.output
    assert json.loads(alt.stdout) == json.loads(base.stdout)


def test_an_unknown_choice_is_one_red_line_listing_the_choices(tiny_model, poster_dir):
    res = run("predict", poster_dir, "--model", tiny_model, "--decision", "vote")
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: unknown decision 'vote'; choose one of top_k, thresholds"
    res = run("train", "--out", "m", "--mode", "deep")
    assert res.exit_code == 2 and "choose one of frozen, tail, finetune" in res.stderr
