"""The ``postergenre`` command: a thin layer over the Python API.

Each command parses its options, calls the API, and prints what came back. A
:class:`~postergenre.errors.PosterGenreError` (a mistake the user can fix) is printed as one red
line with exit code 2; any other exception is a bug and keeps its traceback. The help page,
choice options and shared helpers live in :mod:`postergenre.app._clikit`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._clikit import (CALIBRATIONS, CONTEXT, DECISIONS, ENGINES, HEADS, LOSSES, METRICS_FORMATS, MODES,
                      PREDICTION_FORMATS, SPLITS, App, backbones_table, choice, emit, fit_text_branch, parse_size,
                      parse_weights, print_training, print_version, report_run)
from ._clikit import warn as _warn
from ._clikit import reported as _reported

app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, context_settings=CONTEXT,
          help="Predict a movie's genres from its poster.")
data_app = App(no_args_is_help=True, context_settings=CONTEXT, help="Inspect a dataset, or build the extra training set.")
app.add_typer(data_app, name="data")

# Options several commands share.
DataDir = Annotated[Optional[Path], typer.Option("--data", metavar="DIR", help="Dataset folder: DIR/train.csv + DIR/Images/<Id>.jpg.")]
LabelsCsv = Annotated[Optional[Path], typer.Option("--labels", metavar="FILE", help="Labels CSV (instead of --data).")]
ImagesDir = Annotated[Optional[Path], typer.Option("--images", metavar="DIR", help="Images folder (instead of --data).")]
ScorerModel = Annotated[str, typer.Option("--model", "-m", metavar="MODEL", help="Model directory, an exported .onnx file, or 'default' (built in).")]
TorchModel = Annotated[str, typer.Option("--model", "-m", metavar="MODEL", help="Model directory, or 'default' (built in).")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", metavar="DIR", help="Feature cache (default ~/.cache/postergenre).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (they are shown only when stderr is a terminal).")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite the output if it exists (by default an existing one is refused).")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, metavar="N", help="Decoding workers (default: up to 2).")]
TEXT_HELP = ("on: also read each poster's words with OCR and fuse them with the image (the model's text branch: "
             "test mAP 0.33 -> 0.39; one poster 1.3 s instead of 0.5 s, a catalogue ~6 posters/s instead of ~59 on "
             "2 cores; what was read is cached by image content); off: the image alone, at catalogue speed.")


def _command_line() -> str | None:
    """This process's command line, for the model card (None when the CLI runs inside another program)."""
    return shlex.join(["postergenre", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("postergenre", "__main__.py") else None


def _check_top_k(ctx: typer.Context, top_k: int | None, model: str) -> None:
    """--top-k past the model's genre count is refused, as the API refuses it (422), rather than cut to it."""
    from ..inference.scorer import genre_count

    n = genre_count(model) if top_k is not None else None
    if n is not None and top_k > n:
        raise typer.BadParameter(f"{top_k} is more than the {n} genres model {model!r} scores: give 1 to {n}",
                                 ctx=ctx, param_hint="'--top-k' / '-k'")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=print_version, metavar="",
                                       help="Print the version and exit.")) -> None:
    pass


@app.command()
def predict(
    ctx: typer.Context,
    paths: List[Path] = typer.Argument(..., metavar="PATHS...", help="Poster files and/or folders (searched recursively)."),
    model: ScorerModel = "default",
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, metavar="N", help="Genres per poster (top_k rule), or the most (thresholds rule): 1 to the model's genre count."),
    decision: str = choice("top_k", "--decision", choices=DECISIONS, help="top_k: the N best genres (the study's rule); thresholds: those past their threshold tuned on validation."),
    fmt: Optional[str] = choice(None, "--format", "-f", choices=PREDICTION_FORMATS, help="Default: the one --output's extension names (.txt table, .json, .jsonl, .csv), else table."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Write to FILE instead of stdout. .csv and .jsonl are written row by row as posters are done."),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in --output (.csv/.jsonl) and skip their posters."),
    force: Force = False,
    batch_size: int = typer.Option(8, "--batch-size", min=1, metavar="N", help="Posters scored together (8: as fast as larger batches on CPU, a third of the memory)."),
    workers: Workers = None,
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, cuda or cuda:N."),
    engine: str = choice("auto", "--engine", choices=ENGINES, help="auto: ONNX Runtime on CPU (exported once into the cache; int8 where the model's int8 engine kept its test figures), PyTorch on a GPU. onnx: fp32; int8: quantized."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any input fails (default: only if all fail)."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="I/N", help="Only this worker's share of the files (positions I, I+N, ...); "
                                        "with --output FILE, writes FILE's shard file (join them with `postergenre merge FILE`). "
                                        "Under torchrun: RANK/WORLD_SIZE, merged by rank 0."),
    text: str = choice("off", "--text", choices=("on", "off"), help=TEXT_HELP),
    cluster: Optional[str] = choice(None, "--cluster", choices=("ray",), help="ray: run on Ray Data (pip install 'postergenre[ray]'): an embedded local Ray on every core, or the cluster at --address; needs --output FILE.jsonl or DIR.parquet. PATHS may also be globs and list files (.txt: one path a line)."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDR", help="With --cluster ray: the Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray started for this run)."),
    quiet: Quiet = False,
):
    """Print (or write) the genres of each poster."""
    from ..inference.batch import run_predictions

    try:
        with _reported():
            _check_top_k(ctx, top_k, model)
            if cluster == "ray":
                from ..inference.ray_runner import run_on_ray

                if shard or fmt not in (None, "jsonl") or device != "cpu":
                    raise typer.BadParameter("--cluster ray takes no --shard, --device or --format other than jsonl (--output names the format)", ctx=ctx)
                run = run_on_ray([str(p) for p in paths], model, output=output, address=address, decision=decision, top_k=top_k,
                                 resume=resume, force=force, engine=engine, text=text == "on", quiet=quiet)
            else:
                run = run_predictions(paths, model, decision=decision, top_k=top_k, fmt=fmt, output=output, resume=resume,
                                      force=force, shard=shard, batch_size=batch_size, workers=workers, device=device,
                                      engine=engine, progress=not quiet and sys.stderr.isatty(), text=text == "on")
    except KeyboardInterrupt as exc:  # Interrupted says how many rows are safe in the output file
        typer.secho(str(exc) or "interrupted", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    report_run(run, strict)


@app.command()
def train(
    data: DataDir = None,
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Model directory to write (an existing one needs --force or --resume)."),
    backbone: str = typer.Option(None, "--backbone", metavar="NAME", help="Backbone name (see `postergenre backbones`; default: the one marked there)."),
    extra_data: Optional[List[Path]] = typer.Option(None, "--extra-data", metavar="DIR", help="Another dataset folder (same layout) whose posters only join training; repeatable. Posters whose Id or image is already used are dropped (counted)."),
    mode: str = choice("frozen", "--mode", choices=MODES, help="frozen (cached features + head), tail (+ the last blocks tuned on cached maps) or finetune (end to end)."),
    tail_blocks: int = typer.Option(1, "--tail-blocks", min=0, metavar="N", help="Mode tail: how many of the last backbone blocks to tune (the head convolution always is)."),
    tail_epochs: int = typer.Option(6, "--tail-epochs", min=1, metavar="N", help="Mode tail: epochs of tuning after the head is fitted."),
    tail_lr: float = typer.Option(1e-4, "--tail-lr", metavar="LR", help="Mode tail: learning rate of the tuning."),
    calibration: str = choice("platt", "--calibration", choices=CALIBRATIONS, help="Per-genre calibration of the scores, fitted on validation."),
    recipe_name: Optional[str] = choice(None, "--recipe", choices=("poster", "study"), label="recipe", help="Mode finetune: poster (the default: AdamW, lr 1e-3 / 4e-3 for the new head, weight decay 0.02, batch 128, 1 epoch warm-up then cosine, EMA 0.998, augmentation on the device, 20 epochs, the backbone's input size) or study (the study's: Adam, lr 1e-4, batch 33, 350x350, no augmentation, 25 epochs). Options given explicitly override it."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, metavar="N", help="Most epochs (default: 40 frozen; finetune: 20 poster, 25 study)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, metavar="N", help="Posters per training step (default: 33; finetune: 128 poster, 33 study)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", metavar="N|HxW", help="Input size: N (square) or HxW, e.g. 384x256 (default: the backbone's; finetune study: 350)."),
    lr: Optional[float] = typer.Option(None, "--lr", metavar="LR", help="Learning rate (default: 3e-4 frozen; finetune: 1e-3 poster, 1e-4 study)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", metavar="WD", help="Default: 0.05 frozen; finetune: 0.02 poster, 0 study."),
    compile_step: bool = typer.Option(False, "--compile", help="Mode finetune: torch.compile the training step (CUDA graphs on a GPU); opt-in."),
    head: str = choice("mlp", "--head", choices=HEADS, help="The head on the backbone's features."),
    hidden: int = typer.Option(512, "--hidden", metavar="N", help="Hidden units of the mlp head."),
    heads: int = typer.Option(1, "--heads", min=1, metavar="N", help="Train an ensemble of this many heads (seeds seed, seed+1, ...); the model averages their logits."),
    dropout: float = typer.Option(0.7, "--dropout", metavar="P", help="Dropout before each layer of the head."),
    loss: str = choice("bce", "--loss", choices=LOSSES, help="bce, bce_balanced (class-balanced) or asl (asymmetric loss)."),
    patience: int = typer.Option(10, "--patience", min=1, metavar="N", help="Stop after N epochs without a better validation mAP."),
    val_fraction: float = typer.Option(0.15, "--val-fraction", metavar="F", help="Validation part (of what the test part leaves)."),
    test_fraction: float = typer.Option(0.0, "--test-fraction", metavar="F", help="Keep this part aside, score it once at the end (test_metrics.json)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the split, the initialisation and the batch order."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu or cuda."),
    weights: Optional[Path] = typer.Option(None, "--weights", metavar="FILE", help="Backbone weights file (torchvision state dict)."),
    cache_dir: CacheDir = None,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out posters whose image is missing or unreadable."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, metavar="N", help="Use only the first N posters (quick trials)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last per-epoch checkpoint."),
    force: Force = False,
    workers: Workers = None,
    text: bool = typer.Option(False, "--text", help="Also fit the text branch (OCR of every training and validation poster, cached and resumable; see train-text)."),
    quiet: Quiet = False,
):
    """Train a model on a dataset in the study's layout and save it to --out."""
    from ..data.dataset import load_training_data
    from ..inference.formats import check_overwrite
    from ..training.train import DEFAULT_BACKBONE, Recipe
    from ..training.train import train as run_train

    with _reported(teardown=True):
        size = parse_size(image_size) if image_size else None
        check_overwrite(out, force=force, resume=resume, resumable=True, folder=True)
        ds, extra_reports = load_training_data(data, labels, images, extra_data or [], skip_bad, limit, log=_warn)
        recipe = Recipe(backbone=backbone or DEFAULT_BACKBONE, mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, head=head, hidden=hidden, heads=heads, dropout=dropout, loss=loss, image_size=size,
                        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, patience=patience, device=device,
                        workers=workers, tail_blocks=tail_blocks, tail_epochs=tail_epochs, tail_lr=tail_lr, preset=recipe_name,
                        calibration=calibration, weights=str(weights) if weights else None, compile=compile_step)
        m = run_train(ds, recipe, out, cache_dir=cache_dir, progress=not quiet, command=_command_line(),
                      data_source=str(data or labels), resume=resume, extra_reports=extra_reports)
        if text and int(os.environ.get("RANK", "0")) == 0:
            fit_text_branch(out, ds, cache_dir, quiet, score_test=recipe.test_fraction > 0)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports (and wrote the model)
        print_training(out, m.config.training)


@app.command("train-text")
def train_text(
    model: TorchModel = ...,
    data: DataDir = None,
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    extra_data: Optional[List[Path]] = typer.Option(None, "--extra-data", metavar="DIR", help="The other training sources the model was trained with (repeatable)."),
    score_test: bool = typer.Option(False, "--score-test", help="Also score the model's test part once, text off and on (test_metrics_text.json)."),
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
):
    """Fit (or refit) a model's text branch on its own split; the image branch stays as it is. OCR reads every training and validation poster once (cached by image content: an interrupted run resumes); the evidence is fitted on training, the fusion on validation."""
    from ..data.dataset import load_training_data

    with _reported():
        ds, _ = load_training_data(data, labels, images, extra_data or [], log=_warn)
        fit_text_branch(Path(model), ds, cache_dir, quiet, score_test)


@app.command()
def evaluate(
    ctx: typer.Context,
    data: DataDir = None,
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    model: ScorerModel = "default",
    decision: Optional[str] = choice(None, "--decision", choices=DECISIONS, help="Default: the model's rule."),
    top_k: Optional[int] = typer.Option(None, "--top-k", "-k", min=1, metavar="N", help="Genres per poster, 1 to the model's genre count (default: the model's, 3)."),
    fmt: Optional[str] = choice(None, "--format", "-f", choices=METRICS_FORMATS, help="Default: the one --output's extension names (.txt table, .json), else table."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Write the metrics to FILE instead of stdout."),
    force: Force = False,
    cache_dir: CacheDir = None,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out posters whose image is missing or unreadable."),
    only_split: Optional[str] = choice(None, "--only-split", choices=SPLITS, label="split", help="Only the posters of that part of the model's own split (split.json)."),
    engine: str = choice("auto", "--engine", choices=ENGINES, help="auto: frozen models through the feature cache, others with ONNX Runtime."),
    reliability: Optional[Path] = typer.Option(None, "--reliability", metavar="FILE", help="Also draw the reliability diagram (calibration) of the scores into this PNG."),
    text: str = choice("off", "--text", choices=("on", "off"), help=TEXT_HELP),
    quiet: Quiet = False,
):
    """Evaluate a model on ALL labelled posters of a dataset (or, with --only-split, on one part of its training split)."""
    from ..inference.formats import METRICS_FORMATS as FORMATS
    from ..inference.formats import check_overwrite, output_format
    from ..inference.predict import evaluate_model

    with _reported():
        _check_top_k(ctx, top_k, model)
        fmt = output_format(output, fmt, FORMATS)
        for path in (p for p in (output, reliability) if p is not None):
            check_overwrite(path, force=force)
        metrics = evaluate_model(model, data, labels, images, decision=decision, top_k=top_k, engine=engine,
                                 cache_dir=cache_dir, skip_bad=skip_bad, only_split=only_split,
                                 progress=not quiet and sys.stderr.isatty(), reliability_png=reliability, text=text == "on")
        emit(FORMATS[fmt](metrics), output)


@app.command()
def compare(
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Results folder (an existing one that is not empty needs --force or --resume)."),
    backbones: str = typer.Option(..., "--backbones", metavar="NAME,NAME,...", help="Comma-separated backbone names."),
    data: DataDir = None,
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    mode: str = choice("frozen", "--mode", choices=("frozen", "finetune"), help="Train each backbone frozen (features + head) or end to end."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, metavar="N", help="Most epochs per backbone (default: the mode's)."),
    batch_size: int = typer.Option(33, "--batch-size", min=1, metavar="N", help="Posters per training step."),
    image_size: Optional[str] = typer.Option(None, "--image-size", metavar="N|HxW", help="N or HxW (default: each backbone's own; finetune: 350)."),
    test_fraction: float = typer.Option(0.15, "--test-fraction", metavar="F", help="Part of the posters kept aside to score every backbone on."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the split and of training."),
    weights: List[str] = typer.Option([], "--weights", metavar="NAME=FILE", help="Local weights for a backbone (repeatable)."),
    allow_random_init: bool = typer.Option(False, "--allow-random-init", help="Train backbones without pretrained weights on random ones (the row says so)."),
    resume: bool = typer.Option(False, "--resume", help="Keep the finished rows of an interrupted run."),
    force: Force = False,
    new_posters: Optional[Path] = typer.Option(None, "--new-posters", metavar="DIR", help="Posters for predictions.png (default: the sample posters shipped in the package)."),
    cache_dir: CacheDir = None,
    limit: Optional[int] = typer.Option(None, "--limit", min=4, metavar="N", help="Use only the first N posters (quick trials)."),
    quiet: Quiet = False,
):
    """Train several backbones under one protocol and write the study's table and figures."""
    from ..study.compare import CompareConfig
    from ..study.compare import compare as run_compare
    from ..data.dataset import load_dataset
    from ..inference.formats import check_overwrite
    from ..inference.onnx_engine import sample_posters
    from ..inference.predict import iter_image_paths

    with _reported():
        named = parse_weights(weights)
        check_overwrite(out, force=force, resume=resume, resumable=True, folder=True)
        ds, _ = load_dataset(data, labels, images)
        if limit:
            ds = ds.subset(range(min(limit, len(ds))))
        cfg = CompareConfig(backbones=[b.strip() for b in backbones.split(",") if b.strip()], mode=mode, epochs=epochs,
                            batch_size=batch_size, image_size=parse_size(image_size) if image_size else None,
                            test_fraction=test_fraction, seed=seed, weights=named, allow_random_init=allow_random_init)
        posters = list(iter_image_paths([new_posters])) if new_posters else sample_posters()
        run_compare(ds, cfg, out, cache_dir=cache_dir, resume=resume, progress=not quiet, new_posters=posters,
                    log=lambda msg: typer.secho(msg, err=True))
    typer.echo((Path(out) / "results.md").read_text())


@app.command()
def merge(
    output: Path = typer.Argument(..., metavar="FILE", help="The merged file to write (FILE.csv or FILE.jsonl); its shards are FILE.shard-I-of-N.*"),
    keep: bool = typer.Option(False, "--keep", help="Keep the shard files after merging."),
    force: Force = False,
):
    """Join the outputs of `predict --shard I/N --output FILE` (all N shards) into FILE."""
    from ..inference.formats import merge_shards

    with _reported():
        path, n = merge_shards(output, remove=not keep, force=force)
    typer.echo(f"wrote {path}: {n} poster(s)")


@app.command()
def export(
    out: Path = typer.Option(..., "--out", metavar="FILE", help="The .onnx file to write."),
    model: TorchModel = "default",
    check: Optional[List[Path]] = typer.Option(None, "--check", metavar="PATH", help="Posters (files or folders) to verify ONNX Runtime against PyTorch on (default: the shipped samples)."),
    force: Force = False,
):
    """Export a model (backbone + head + sigmoid, preprocessing in the metadata) to ONNX, verified to 1e-4."""
    from .._io import writing
    from ..errors import UsageError
    from ..inference.formats import check_overwrite
    from ..modeling.model import load_model
    from ..inference.onnx_engine import export_onnx
    from ..inference.predict import iter_image_paths

    with _reported():
        if out.suffix.lower() != ".onnx":
            raise UsageError(f"{out}: the output file must end in .onnx")
        check_overwrite(out, force=force)
        torch_model = load_model(model)
        with writing(out):
            report = export_onnx(torch_model, out, list(iter_image_paths(check)) if check else None)
    typer.echo(f"wrote {report['path']}  (ONNX Runtime vs PyTorch on {report['n_checked']} poster(s): max |diff| {report['max_abs_diff']:.1e})")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, metavar="N", help="Port to listen on."),
    model: ScorerModel = "default",
    engine: str = choice("auto", "--engine", choices=ENGINES, help="As for predict."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.001, metavar="MB", help="Largest accepted file."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, metavar="N", help="Largest accepted image (width x height)."),
    no_warm: bool = typer.Option(False, "--no-warm", help="Load PyTorch only for the first heatmap: ~144 MB idle instead of ~1 GB, but that heatmap takes ~4.3 s instead of ~0.37 s."),
):
    """Start the web page and HTTP API (FastAPI + uvicorn): open http://HOST:PORT/."""
    from ..inference.scorer import check_engine
    from .serve import run_server

    with _reported():
        check_engine(engine)
    run_server(host, port, model=model, engine=engine, max_upload_mb=max_upload_mb, max_pixels=max_pixels, warm=not no_warm)


@app.command()
def explain(
    poster: Path = typer.Argument(..., metavar="FILE", help="The poster image."),
    genre: str = typer.Option(..., "--genre", "-g", help="The genre to explain (any case, with -, _ or no separator: sci_fi, scifi)."),
    output: Path = typer.Option(..., "--output", "-o", "--out", metavar="FILE", help="Image to write (.png, .jpg or .webp): the poster with the heatmap, a legend, the genre and its score."),
    model: TorchModel = "default",
    force: Force = False,
):
    """Grad-CAM heatmap of the regions of POSTER that drove GENRE's score."""
    from .explain import save_explanation
    from ..inference.formats import check_overwrite

    with _reported():
        check_overwrite(output, force=force)
        genre, score = save_explanation(model, poster, genre, output)
    typer.echo(f"wrote {output}  ({genre} score {score:.3f})")


@data_app.command("check")
def data_check(
    data: Optional[Path] = typer.Argument(None, metavar="DIR", help="Dataset folder (train.csv + Images/)."),
    labels: LabelsCsv = None,
    images: ImagesDir = None,
    fmt: str = choice("table", "--format", "-f", choices=METRICS_FORMATS, help="The report as a table or as JSON."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Skip decoding every image (faster)."),
):
    """Report on a dataset: posters, labels per genre, duplicates, missing and unreadable images."""
    from ..data.dataset import load_dataset

    with _reported():
        _, report = load_dataset(data, labels, images, skip_bad=True, verify_images=not no_decode)
    typer.echo(json.dumps(report.to_dict(), indent=2) if fmt == "json" else report.to_text())


@data_app.command("build-extra")
def data_build_extra(
    labels_repo: Path = typer.Option(..., "--labels-repo", metavar="DIR", help="Clone of d-misra/Multi-label-movie-poster-genre-classification."),
    images_repo: Path = typer.Option(..., "--images-repo", metavar="DIR", help="Clone (or bare git dir) of srijonsarkar/Movie-Genre-Prediction."),
    study: Path = typer.Option(..., "--study", metavar="DIR", help="The study's dataset (laxmimerit/Movies-Poster_Dataset): train.csv + Images/."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Folder to write train.csv + Images/ into (a rerun resumes: no --force needed)."),
):
    """Build the extra training set (the project's extra-posters) from clones of its public sources."""
    from ..data.build_extra import build_extra_set

    with _reported():
        report = build_extra_set(labels_repo, images_repo, study, out)
    typer.echo(report.to_text())


@app.command()
def backbones():
    """List the registered backbones, their input size and where their weights come from."""
    from ..backbones import REGISTRY
    from ..training.recipe import DEFAULT_BACKBONE

    typer.echo(backbones_table(REGISTRY, DEFAULT_BACKBONE))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
