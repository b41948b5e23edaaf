"""The ``postergenre`` command: a thin layer over the Python API.

Each command parses its options, calls the API, and prints what came back. A
:class:`~postergenre.errors.PosterGenreError` (a mistake the user can fix) is printed as one red
line with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer

from .errors import PosterGenreError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Predict a movie's genres from its poster.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect a dataset.")
app.add_typer(data_app, name="data")

# Options several commands share.
DataDir = Annotated[Optional[Path], typer.Option("--data", help="Dataset folder: DIR/train.csv + DIR/Images/<Id>.jpg.")]
LabelsCsv = Annotated[Optional[Path], typer.Option("--labels", help="Labels CSV (instead of --data).")]
ImagesDir = Annotated[Optional[Path], typer.Option("--images", help="Images folder (instead of --data).")]
ScorerModel = Annotated[str, typer.Option("--model", "-m", help="Model directory, an exported .onnx file, or 'default' (built in).")]
TorchModel = Annotated[str, typer.Option("--model", "-m", help="Model directory, or 'default' (built in).")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Feature cache (default ~/.cache/postergenre).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _fail(exc: PosterGenreError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextmanager
def _reported(teardown: bool = False) -> Iterator[None]:
    """Runs a command's API call: a PosterGenreError becomes one red line and exit code 2 (no
    traceback); anything else propagates. ``teardown``: leave torchrun's process group after."""
    try:
        yield
    except PosterGenreError as exc:
        _fail(exc)
    finally:
        if teardown:
            from .distributed import teardown as leave_process_group

            leave_process_group()


def _parse_size(text: str):
    """'350' -> 350; '384x256' -> (384, 256) (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and 16 <= int(p) <= 4096 for p in parts):
        raise UsageError(f"--image-size must be N or HxW with sides from 16 to 4096, not {text!r}")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def _parse_weights(items: List[str]) -> dict[str, str]:
    """``["resnet50=FILE", ...]`` -> ``{"resnet50": "FILE"}``."""
    named = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not file:
            raise UsageError(f"--weights takes NAME=FILE, not {item!r}")
        named[name.strip()] = file.strip()
    return named


def _emit(text: str, output: Optional[Path]) -> None:
    """``text`` on stdout, or written (atomically) to ``output``; OutputError if it cannot be."""
    if output is None:
        typer.echo(text)
        return
    from ._io import atomic_file
    from ._io import writing

    with writing(output):
        atomic_file(output, text + "\n")
    typer.secho(f"wrote {output}", err=True)


def _warn(message: str) -> None:
    typer.secho(message, fg=typer.colors.YELLOW, err=True)


def _command_line() -> str | None:
    """This process's command line, for the model card (None when the CLI runs inside another program)."""
    return shlex.join(["postergenre", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("postergenre", "__main__.py") else None


@app.command()
def predict(
    paths: List[Path] = typer.Argument(..., help="Poster files and/or folders (searched recursively)."),
    model: ScorerModel = "default",
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="Genres per poster (top-k rule), or the most (thresholds rule)."),
    decision: str = typer.Option("top_k", "--decision", help="top_k (the study's rule) or thresholds (tuned per genre on validation)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table, json, csv or jsonl (default: table; with --output FILE.csv/.jsonl, the file's kind)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file. .csv and .jsonl are written row by row as posters are done."),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in --output (.csv/.jsonl) and skip their posters."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: up to 2)."),
    device: str = typer.Option("cpu", "--device"),
    engine: str = typer.Option("auto", "--engine", help="auto (ONNX Runtime on CPU, exported once into the cache), torch or onnx."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any input fails (default: only if all fail)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: only this worker's share of the files (positions I, I+N, ...); "
                                        "with --output FILE, writes FILE's shard file (join them with `postergenre merge FILE`). "
                                        "Under torchrun: RANK/WORLD_SIZE, merged by rank 0."),
):
    """Print (or write) the genres of each poster."""
    from .batch import run_predictions

    with _reported():
        run = run_predictions(paths, model, decision=decision, top_k=top_k, fmt=fmt, output=output, resume=resume,
                              shard=shard, batch_size=batch_size, workers=workers, device=device, engine=engine)
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
        typer.secho(f"{run.failed} of {run.done} input(s) could not be read", fg=typer.colors.YELLOW, err=True)
    if (run.done and run.failed == run.done) or (strict and run.failed):
        raise typer.Exit(1)


@app.command()
def train(
    data: DataDir = None,
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    backbone: str = typer.Option(None, "--backbone", help="Backbone name (postergenre backbones)."),
    extra_data: Optional[List[Path]] = typer.Option(None, "--extra-data", help="Another dataset folder (same layout) whose posters only join training; repeatable. Posters whose Id or image is already used are dropped (counted)."),
    mode: str = typer.Option("frozen", "--mode", help="frozen (cached features + head), tail (+ the last blocks tuned on cached maps) or finetune (end to end)."),
    tail_blocks: int = typer.Option(1, "--tail-blocks", min=0, help="Mode tail: how many of the last backbone blocks to tune (the head convolution always is)."),
    tail_epochs: int = typer.Option(6, "--tail-epochs", min=1, help="Mode tail: epochs of tuning after the head is fitted."),
    tail_lr: float = typer.Option(1e-4, "--tail-lr", help="Mode tail: learning rate of the tuning."),
    calibration: str = typer.Option("platt", "--calibration", help="Per-genre calibration fitted on validation: platt, temperature or none."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    batch_size: int = typer.Option(33, "--batch-size", min=1),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Input size: N (square) or HxW, e.g. 384x256 (default: the backbone's; finetune: 350)."),
    lr: Optional[float] = typer.Option(None, "--lr"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Default: 0.05 frozen, 0 finetune."),
    head: str = typer.Option("mlp", "--head", help="mlp or linear."),
    hidden: int = typer.Option(512, "--hidden"),
    heads: int = typer.Option(1, "--heads", min=1, help="Train an ensemble of this many heads (seeds seed, seed+1, ...); the model averages their logits."),
    dropout: float = typer.Option(0.7, "--dropout"),
    loss: str = typer.Option("bce", "--loss", help="bce, bce_balanced or asl (asymmetric loss)."),
    patience: int = typer.Option(10, "--patience", min=1),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="Validation part (of what the test part leaves)."),
    test_fraction: float = typer.Option(0.0, "--test-fraction", help="Keep this part aside, score it once at the end (test_metrics.json)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights file (torchvision state dict)."),
    cache_dir: CacheDir = None,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out posters whose image is missing or unreadable."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, help="Use only the first N posters (quick trials)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last per-epoch checkpoint."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: up to 2)."),
    quiet: Quiet = False,
):
    """Train a model on a dataset in the study's layout and save it to --out."""
    from .data import load_training_data
    from .train import DEFAULT_BACKBONE, Recipe
    from .train import train as run_train

    with _reported(teardown=True):
        ds, extra_reports = load_training_data(data, labels, images, extra_data or [], skip_bad, limit, log=_warn)
        size = _parse_size(image_size) if image_size else None
        recipe = Recipe(backbone=backbone or DEFAULT_BACKBONE, mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, head=head, hidden=hidden, heads=heads, dropout=dropout, loss=loss, image_size=size,
                        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, patience=patience, device=device,
                        workers=workers, tail_blocks=tail_blocks, tail_epochs=tail_epochs, tail_lr=tail_lr,
                        calibration=calibration, weights=str(weights) if weights else None)
        m = run_train(ds, recipe, out, cache_dir=cache_dir, progress=not quiet, command=_command_line(),
                      data_source=str(data or labels), resume=resume, extra_reports=extra_reports)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports (and wrote the model)
        _print_training(out, m.config.training)


def _print_training(out: Path, record) -> None:
    typer.echo(f"saved {out}  ({record.training_seconds} s)")
    for part, scores in (("validation", record.validation_metrics), ("test", record.test_metrics)):
        if scores:
            typer.echo(f"{part}: " + ", ".join(f"{k} {scores[k]:.4f}" for k in ("micro_recall_at_3", "mAP", "micro_f1", "hamming_loss")))


@app.command()
def evaluate(
    data: DataDir = None,
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    model: ScorerModel = "default",
    decision: str = typer.Option(None, "--decision", help="top_k or thresholds (default: the model's rule)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    cache_dir: CacheDir = None,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out posters whose image is missing or unreadable."),
    only_split: Optional[str] = typer.Option(None, "--only-split", help="train, val or test: only the posters of that part of the model's own split (split.json)."),
    engine: str = typer.Option("auto", "--engine", help="auto (frozen models: the feature cache; others: ONNX Runtime), torch or onnx."),
    reliability: Optional[Path] = typer.Option(None, "--reliability", help="Also draw the reliability diagram (calibration) of the scores into this PNG."),
):
    """Evaluate a model on ALL labelled posters of a dataset (or, with --only-split, on one part of its training split)."""
    from .formats import METRICS_FORMATS
    from .predict import evaluate_model

    with _reported():
        if fmt not in METRICS_FORMATS:
            raise UsageError(f"unknown format {fmt!r}; choose {', '.join(METRICS_FORMATS)}")
        metrics = evaluate_model(model, data, labels, images, decision=decision, top_k=top_k, engine=engine,
                                 cache_dir=cache_dir, skip_bad=skip_bad, only_split=only_split,
                                 progress=sys.stderr.isatty(), reliability_png=reliability)
        _emit(METRICS_FORMATS[fmt](metrics), output)


@app.command()
def compare(
    out: Path = typer.Option(..., "--out", help="Results folder."),
    backbones: str = typer.Option(..., "--backbones", help="Comma-separated backbone names."),
    data: DataDir = None,
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    mode: str = typer.Option("frozen", "--mode", help="frozen or finetune."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    batch_size: int = typer.Option(33, "--batch-size", min=1),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="N or HxW (default: each backbone's own; finetune: 350)."),
    test_fraction: float = typer.Option(0.15, "--test-fraction"),
    seed: int = typer.Option(0, "--seed"),
    weights: List[str] = typer.Option([], "--weights", help="NAME=FILE: local weights for a backbone (repeatable)."),
    allow_random_init: bool = typer.Option(False, "--allow-random-init", help="Train backbones without pretrained weights on random ones (the row says so)."),
    resume: bool = typer.Option(False, "--resume", help="Keep the finished rows of an interrupted run."),
    new_posters: Optional[Path] = typer.Option(None, "--new-posters", help="Posters for predictions.png (default: the sample posters shipped in the package)."),
    cache_dir: CacheDir = None,
    limit: Optional[int] = typer.Option(None, "--limit", min=4, help="Use only the first N posters (quick trials)."),
    quiet: Quiet = False,
):
    """Train several backbones under one protocol and write the study's table and figures."""
    from .compare import CompareConfig
    from .compare import compare as run_compare
    from .data import load_dataset
    from .onnx_engine import sample_posters
    from .predict import iter_image_paths

    with _reported():
        named = _parse_weights(weights)
        ds, _ = load_dataset(data, labels, images)
        if limit:
            ds = ds.subset(range(min(limit, len(ds))))
        cfg = CompareConfig(backbones=[b.strip() for b in backbones.split(",") if b.strip()], mode=mode, epochs=epochs,
                            batch_size=batch_size, image_size=_parse_size(image_size) if image_size else None,
                            test_fraction=test_fraction, seed=seed, weights=named, allow_random_init=allow_random_init)
        posters = list(iter_image_paths([new_posters])) if new_posters else sample_posters()
        run_compare(ds, cfg, out, cache_dir=cache_dir, resume=resume, progress=not quiet, new_posters=posters,
                    log=lambda msg: typer.secho(msg, err=True))
    typer.echo((Path(out) / "results.md").read_text())


@app.command()
def merge(
    output: Path = typer.Argument(..., help="The merged file to write (FILE.csv or FILE.jsonl); its shards are FILE.shard-I-of-N.*"),
    keep: bool = typer.Option(False, "--keep", help="Keep the shard files after merging."),
):
    """Join the outputs of `predict --shard I/N --output FILE` (all N shards) into FILE."""
    from .formats import merge_shards

    with _reported():
        path, n = merge_shards(output, remove=not keep)
    typer.echo(f"wrote {path}: {n} poster(s)")


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    model: TorchModel = "default",
    check: Optional[List[Path]] = typer.Option(None, "--check", help="Posters to verify ONNX Runtime against PyTorch on (default: the shipped samples)."),
):
    """Export a model (backbone + head + sigmoid, preprocessing in the metadata) to ONNX, verified to 1e-4."""
    from ._io import writing
    from .model import load_model
    from .onnx_engine import export_onnx
    from .predict import iter_image_paths

    with _reported():
        if out.suffix.lower() != ".onnx":
            raise UsageError(f"{out}: the output file must end in .onnx")
        torch_model = load_model(model)
        with writing(out):
            report = export_onnx(torch_model, out, list(iter_image_paths(check)) if check else None)
    typer.echo(f"wrote {report['path']}  (ONNX Runtime vs PyTorch on {report['n_checked']} poster(s): max |diff| {report['max_abs_diff']:.1e})")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    model: ScorerModel = "default",
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnx (as for predict)."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.001, help="Largest accepted file."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, help="Largest accepted image (width x height)."),
):
    """Start the web page and HTTP API (FastAPI + uvicorn): open http://HOST:PORT/."""
    from .inference import check_engine
    from .serve import run_server

    with _reported():
        check_engine(engine)
    run_server(host, port, model=model, engine=engine, max_upload_mb=max_upload_mb, max_pixels=max_pixels)


@app.command()
def explain(
    poster: Path = typer.Argument(..., help="The poster image."),
    genre: str = typer.Option(..., "--genre", "-g", help="The genre to explain."),
    out: Path = typer.Option(..., "--out", help="PNG to write: the poster with the heatmap over it."),
    model: TorchModel = "default",
):
    """Grad-CAM heatmap of the regions of POSTER that drove GENRE's score."""
    from ._io import atomic_bytes
    from .explain import explain_poster
    from ._io import writing

    with _reported():
        png, score = explain_poster(model, poster, genre)
        with writing(out):
            atomic_bytes(out, png)
    typer.echo(f"wrote {out}  ({genre} score {score:.3f})")


@data_app.command("check")
def data_check(
    data: Optional[Path] = typer.Argument(None, help="Dataset folder (train.csv + Images/)."),
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Skip decoding every image (faster)."),
):
    """Report on a dataset: posters, labels per genre, duplicates, missing and unreadable images."""
    from .data import load_dataset

    with _reported():
        _, report = load_dataset(data, labels, images, skip_bad=True, verify_images=not no_decode)
    typer.echo(json.dumps(report.to_dict(), indent=2) if fmt == "json" else report.to_text())


@data_app.command("build-extra")
def data_build_extra(
    labels_repo: Path = typer.Option(..., "--labels-repo", help="Clone of d-misra/Multi-label-movie-poster-genre-classification."),
    images_repo: Path = typer.Option(..., "--images-repo", help="Clone (or bare git dir) of srijonsarkar/Movie-Genre-Prediction."),
    study: Path = typer.Option(..., "--study", help="The study's dataset (laxmimerit/Movies-Poster_Dataset): train.csv + Images/."),
    out: Path = typer.Option(..., "--out", help="Folder to write train.csv + Images/ into (a rerun resumes)."),
):
    """Build the extra training set (the project's extra-posters) from clones of its public sources."""
    from .build_extra import build_extra_set

    with _reported():
        report = build_extra_set(labels_repo, images_repo, study, out)
    typer.echo(report.to_text())


@app.command()
def backbones():
    """List the registered backbones and where their weights come from."""
    from .backbones import REGISTRY

    for name, spec in sorted(REGISTRY.items()):
        where = "offline" if spec.offline else "needs --weights FILE or network"
        typer.echo(f"{name:<20} {spec.input_size[0]}x{spec.input_size[1]}  dim {spec.feature_dim:<5} {where:<32} {spec.weight_source}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
