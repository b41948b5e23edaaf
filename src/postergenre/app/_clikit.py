"""The plumbing of the ``postergenre`` command, kept out of cli.py: the standard help page
(``-h``, ``PATHS...`` usage, metavars rather than ``<type>``), choice options that forgive case
and ``-``/``_``, user errors as one red line, and small parsers and printers the commands share.

Nothing here imports PyTorch or NumPy: ``postergenre -h`` and ``--version`` stay instant.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..errors import PosterGenreError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"]}

# The choices of the options, spelt out so that the help page needs no heavy import; a test
# holds each equal to the library's own list.
DECISIONS = ("top_k", "thresholds")  # decision.DECISIONS
PREDICTION_FORMATS = ("table", "json", "csv", "jsonl")  # formats.PREDICTION_FORMATS
METRICS_FORMATS = ("table", "json")  # formats.METRICS_FORMATS
ENGINES = ("auto", "torch", "onnx", "int8")  # inference.ENGINES
MODES = ("frozen", "tail", "finetune")  # recipe.MODES
CALIBRATIONS = ("platt", "temperature", "none")  # recipe.CALIBRATIONS
HEADS = ("linear", "mlp")  # model.HEADS
LOSSES = ("bce", "bce_balanced", "asl")  # losses.LOSSES
SPLITS = ("train", "val", "test")  # the parts of a model's split.json


def fail(exc: PosterGenreError) -> None:
    """A mistake the user can fix: one red line on stderr, exit code 2."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextmanager
def reported(teardown: bool = False) -> Iterator[None]:
    """Runs a command's API call: a PosterGenreError becomes one red line and exit code 2 (no
    traceback); anything else propagates. ``teardown``: leave torchrun's process group after."""
    try:
        yield
    except PosterGenreError as exc:
        fail(exc)
    finally:
        if teardown:
            from ..distributed import teardown as leave_process_group

            leave_process_group()


def canonical(value: str, choices: Sequence[str], label: str) -> str:
    """``value`` as it is spelt in ``choices``, ignoring case and treating ``-`` as ``_``
    (``top-k``, ``TOP_K`` -> ``top_k``); UsageError listing the choices otherwise."""
    def key(text: str) -> str:
        return text.strip().casefold().replace("-", "_")

    for choice in choices:
        if key(choice) == key(value):
            return choice
    raise UsageError(f"unknown {label} {value!r}; choose one of {', '.join(choices)}")


def choice(default: Optional[str], *decls: str, choices: Sequence[str], help: str, label: str | None = None):
    """A typer option taking one of ``choices`` (see :func:`canonical`), listed in the help."""
    label = label or decls[0].lstrip("-").replace("-", " ")
    return typer.Option(default, *decls, help=help, metavar=f"[{'|'.join(choices)}]",
                        callback=lambda value: None if value is None else canonical(value, choices, label))


def _metavar(param: TyperOption) -> str:
    """What an option without its own metavar shows instead of typer's ``<int>``, ``<path>``."""
    desc = param.type_descriptor
    if desc.is_path:
        return "PATH"
    kind = desc.annotation.__args__[0] if desc.is_list else desc.annotation
    return {int: "N", float: "NUM"}.get(kind, "TEXT")


class _Argument(TyperArgument):
    def display_type_rich(self, ctx):  # the metavar names it; typer would add "<path>"
        return None


class _FlagHelp:
    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""  # -h takes no value: no "<bool>"
        return option


class Group(_FlagHelp, TyperGroup):
    """A typer group whose -h/--help shows no type."""


class Command(_FlagHelp, TyperCommand):
    """A typer command with a conventional help page, whose choice options may raise a
    PosterGenreError while the command line is parsed (reported like any other)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if isinstance(p, TyperArgument):
                p.__class__ = _Argument
                p.metavar = p.metavar or p.name.upper() + ("..." if p.nargs != 1 else "")
            elif isinstance(p, TyperOption) and p.metavar is None:
                p.metavar = "" if p.is_flag else _metavar(p)  # a flag takes no value: no "<bool>"

    def collect_usage_pieces(self, ctx) -> list[str]:
        """``[OPTIONS] PATHS...`` (typer writes ``{paths}...``)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                pieces.append(p.metavar if p.required else f"[{p.metavar}]")
        return pieces

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except PosterGenreError as exc:
            fail(exc)


class App(typer.Typer):
    """A typer app whose commands are :class:`Command` s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, cls=Group, **kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


def print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"postergenre {__version__}")
        raise typer.Exit()


def parse_size(text: str):
    """'350' -> 350; '384x256' -> (384, 256) (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and 16 <= int(p) <= 4096 for p in parts):
        raise UsageError(f"--image-size must be N or HxW with sides from 16 to 4096, not {text!r}")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def parse_weights(items: list[str]) -> dict[str, str]:
    """``["resnet50=FILE", ...]`` -> ``{"resnet50": "FILE"}``."""
    named = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not file:
            raise UsageError(f"--weights takes NAME=FILE, not {item!r}")
        named[name.strip()] = file.strip()
    return named


def emit(text: str, output: Optional[Path]) -> None:
    """``text`` on stdout, or written (atomically) to ``output``; OutputError if it cannot be."""
    if output is None:
        typer.echo(text)
        return
    from .._io import atomic_file, writing

    with writing(output):
        atomic_file(output, text + "\n")
    typer.secho(f"wrote {output}", err=True)


def backbones_table(specs: dict, default: str) -> str:
    """The registered backbones, one row each under a header, the default marked ``*``."""
    rows = [("", "NAME", "INPUT", "FEATURES", "WEIGHTS", "SOURCE")]
    for name, spec in sorted(specs.items()):
        rows.append(("*" if name == default else "", name, f"{spec.input_size[0]}x{spec.input_size[1]}",
                     str(spec.feature_dim), "offline" if spec.offline else "--weights FILE or network", spec.weight_source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ["", "* the default (train without --backbone)"])


def warn(message: str) -> None:
    typer.secho(message, fg=typer.colors.YELLOW, err=True)


def report_run(run, strict: bool) -> None:
    if run.text is not None:
        typer.echo(run.text)
    elif run.streamed:
        kept = f", {run.kept} kept from before" if run.kept is not None else ""
        typer.secho(f"wrote {run.written}: {run.done} poster(s){kept}", err=True)
    elif run.written is not None:
        typer.secho(f"wrote {run.written}", err=True)
    if run.merged:
        merged, n_rows, n_shards = run.merged
        typer.secho(f"merged {n_shards} shards into {merged}: {n_rows} poster(s)", err=True)
    if run.failed:
        warn(f"{run.failed} of {run.done} input(s) could not be read")
    if (run.done and run.failed == run.done) or (strict and run.failed):
        raise typer.Exit(1)


def print_training(out: Path, record) -> None:
    typer.echo(f"saved {out}  ({record.training_seconds} s)")
    for part, scores in (("validation", record.validation_metrics), ("test", record.test_metrics)):
        if scores:
            typer.echo(f"{part}: " + ", ".join(f"{k} {scores[k]:.4f}" for k in ("micro_recall_at_3", "mAP", "micro_f1", "hamming_loss")))


def fit_text_branch(model_dir: Path, dataset, cache_dir, quiet: bool, score_test: bool = False) -> None:
    from ..training.text import fit_text

    try:
        report = fit_text(model_dir, dataset, cache_dir=cache_dir, progress=not quiet, log=warn, score_test=score_test)
    except KeyboardInterrupt:
        typer.secho("interrupted: the posters read so far are kept in the OCR cache, and the model is as it was; "
                    "run the same command again to go on", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    for where, scores in (("validation", report), ("test", report.get("test", {}))):
        for part in (p for p in ("text_off", "text_on") if p in scores):
            m = scores[part]
            typer.echo(f"{where}, {part.replace('_', ' ')}: micro_recall_at_3 {m['micro_recall_at_3']:.4f}, "
                       f"mAP {m['mAP']:.4f}, ece {m['ece']:.4f}")
