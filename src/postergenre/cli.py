"""The ``postergenre`` command: a thin layer over the Python API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Predict a movie's genres from its poster.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect a dataset.")
app.add_typer(data_app, name="data")

# Errors a user can cause and fix: shown as one clear line, exit code 2, no traceback.
def _user_errors():
    from .backbones import WeightsUnavailable
    from .data import DatasetError
    from .model import ModelError
    from .onnx_engine import ExportError

    return (DatasetError, ModelError, WeightsUnavailable, ExportError, OSError, KeyError, ValueError)


def _fail(exc: Exception) -> None:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _parse_size(text: str):
    """'350' -> 350; '384x256' -> (384, 256) (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and 16 <= int(p) <= 4096 for p in parts):
        raise ValueError(f"--image-size must be N or HxW with sides from 16 to 4096, not {text!r}")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def _emit(text: str, output: Optional[Path]) -> None:
    if output is None:
        typer.echo(text)
        return
    from .model import atomic_file

    atomic_file(output, text + "\n")
    typer.secho(f"wrote {output}", err=True)


@app.command()
def predict(
    paths: List[Path] = typer.Argument(..., help="Poster files and/or folders (searched recursively)."),
    model: str = typer.Option("default", "--model", "-m", help="Model directory, an exported .onnx file, or 'default' (built in)."),
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
    from . import distributed
    from .formats import PREDICTION_FORMATS, STREAM_SUFFIXES, ResultStream, merge_shards, shard_path
    from .inference import load_scorer
    from .predict import predict_paths

    final_output = output
    stream_kind = STREAM_SUFFIXES.get(output.suffix.lower()) if output else None
    dist = distributed.SINGLE
    try:
        if shard is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist = distributed.setup("cpu")
            shard_ix = (dist.rank, dist.world_size)
        else:
            shard_ix = distributed.parse_shard(shard) if shard else None
        if shard_ix and output:
            if not stream_kind:
                raise ValueError("--shard with --output needs a .csv or .jsonl file (shards are merged row by row)")
            output = shard_path(output, *shard_ix)
        fmt = fmt or stream_kind or "table"
        if fmt not in PREDICTION_FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose {', '.join(PREDICTION_FORMATS)}")
        if stream_kind and fmt != stream_kind:
            raise ValueError(f"--format {fmt} does not match the output file {output.name}")
        if resume and not stream_kind:
            raise ValueError("--resume needs --output FILE.csv or FILE.jsonl")
        m = load_scorer(model, engine, device=device)
        rule = m.decision_rule("thresholds" if decision == "thresholds" else decision, top_k)
        if stream_kind:
            with ResultStream(output, m.genres, resume=resume) as out:
                n_done, failed, total = len(out.done), 0, 0
                for r in predict_paths(m, paths, rule, batch_size=batch_size, workers=workers, skip=out.done, shard=shard_ix):
                    out.write(r)
                    failed += r["error"] is not None
                    total += 1
            typer.secho(f"wrote {output}: {total} poster(s)" + (f", {n_done} kept from before" if resume else ""), err=True)
            if total == 0 and n_done == 0 and not shard_ix:
                _fail(ValueError("no image files found in the given paths"))
            if dist.enabled:  # torchrun: every rank's shard is written; rank 0 joins them
                dist.barrier()
                if dist.is_main:
                    merged, n_rows = merge_shards(final_output)
                    typer.secho(f"merged {dist.world_size} shards into {merged}: {n_rows} poster(s)", err=True)
        else:
            results = list(predict_paths(m, paths, rule, batch_size=batch_size, workers=workers, shard=shard_ix))
            if not results and not shard_ix:
                _fail(ValueError("no image files found in the given paths"))
            _emit(PREDICTION_FORMATS[fmt](results), output)
            failed, total = sum(r["error"] is not None for r in results), len(results)
    except _user_errors() as exc:
        _fail(exc)
    finally:
        distributed.teardown()
    if failed:
        typer.secho(f"{failed} of {total} input(s) could not be read", fg=typer.colors.YELLOW, err=True)
    if (total and failed == total) or (strict and failed):
        raise typer.Exit(1)


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: DIR/train.csv + DIR/Images/<Id>.jpg."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels CSV (instead of --data)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images folder (instead of --data)."),
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
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache (default ~/.cache/postergenre)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out posters whose image is missing or unreadable."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, help="Use only the first N posters (quick trials)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last per-epoch checkpoint."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: up to 2)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Train a model on a dataset in the study's layout and save it to --out."""
    from .data import load_training_data
    from .train import DEFAULT_BACKBONE, Recipe
    from .train import train as run_train

    try:
        ds, extra_reports = load_training_data(data, labels, images, extra_data or [], skip_bad, limit,
                                               log=lambda msg: typer.secho(msg, fg=typer.colors.YELLOW, err=True))
        size = _parse_size(image_size) if image_size else None
        recipe = Recipe(backbone=backbone or DEFAULT_BACKBONE, mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, head=head, hidden=hidden, heads=heads, dropout=dropout, loss=loss, image_size=size,
                        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, patience=patience, device=device,
                        workers=workers, tail_blocks=tail_blocks, tail_epochs=tail_epochs, tail_lr=tail_lr,
                        calibration=calibration)
        m = run_train(ds, recipe, out, cache_dir=cache_dir, weights=weights, progress=not quiet,
                      data_source=str(data or labels), resume=resume, extra_reports=extra_reports)
    except _user_errors() as exc:
        _fail(exc)
    finally:
        from .distributed import teardown

        teardown()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports (and wrote the model)
        return
    typer.echo(f"saved {out}  ({m.config['training_seconds']} s)")
    for part, key in (("validation", "validation_metrics"), ("test", "test_metrics")):
        if key in m.config:
            typer.echo(f"{part}: " + ", ".join(f"{k} {m.config[key][k]:.4f}" for k in ("micro_recall_at_3", "mAP", "micro_f1", "hamming_loss")))


@app.command()
def evaluate(
    data: Optional[Path] = typer.Option(None, "--data"),
    labels: Optional[Path] = typer.Option(None, "--labels"),
    images: Optional[Path] = typer.Option(None, "--images"),
    model: str = typer.Option("default", "--model", "-m"),
    decision: str = typer.Option(None, "--decision", help="top_k or thresholds (default: the model's rule)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    only_split: Optional[str] = typer.Option(None, "--only-split", help="train, val or test: only the posters of that part of the model's own split (split.json)."),
    engine: str = typer.Option("auto", "--engine", help="auto (frozen models: the feature cache; others: ONNX Runtime), torch or onnx."),
    reliability: Optional[Path] = typer.Option(None, "--reliability", help="Also draw the reliability diagram (calibration) of the scores into this PNG."),
):
    """Evaluate a model on ALL labelled posters of a dataset (or, with --only-split, on one part of its training split)."""
    from .data import load_dataset
    from .formats import METRICS_FORMATS
    from .inference import load_scorer
    from .model import read_split
    from .predict import evaluate_dataset

    try:
        if fmt not in METRICS_FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose {', '.join(METRICS_FORMATS)}")
        ds, _ = load_dataset(data, labels, images, skip_bad=skip_bad)
        m = load_scorer(model, engine, cache_dir=cache_dir, features=True)
        if only_split:
            parts = read_split(model)
            if only_split not in parts:
                raise ValueError(f"--only-split must be one of {', '.join(parts)} (the parts in the model's split.json), not {only_split!r}")
            ds = ds.subset_ids(parts[only_split])
        result = evaluate_dataset(m, ds, m.decision_rule(decision, top_k), cache_dir, progress=sys.stderr.isatty(),
                                  reliability_png=reliability)
    except _user_errors() as exc:
        _fail(exc)
    _emit(METRICS_FORMATS[fmt](result), output)


@app.command()
def compare(
    data: Optional[Path] = typer.Option(None, "--data"),
    labels: Optional[Path] = typer.Option(None, "--labels"),
    images: Optional[Path] = typer.Option(None, "--images"),
    out: Path = typer.Option(..., "--out", help="Results folder."),
    backbones: str = typer.Option(..., "--backbones", help="Comma-separated backbone names."),
    mode: str = typer.Option("frozen", "--mode", help="frozen or finetune."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    batch_size: int = typer.Option(33, "--batch-size", min=1),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="N or HxW (default: each backbone's own; finetune: 350)."),
    test_fraction: float = typer.Option(0.15, "--test-fraction"),
    seed: int = typer.Option(0, "--seed"),
    weights: List[str] = typer.Option([], "--weights", help="NAME=FILE: local weights for a backbone (repeatable)."),
    allow_random_init: bool = typer.Option(False, "--allow-random-init", help="Train backbones without pretrained weights on random ones (the row says so)."),
    resume: bool = typer.Option(False, "--resume", help="Keep the finished rows of an interrupted run."),
    new_posters: Optional[Path] = typer.Option(None, "--new-posters", help="Posters for predictions.png (default: ../shared/datasets/new-posters or examples/)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    limit: Optional[int] = typer.Option(None, "--limit", min=4, help="Use only the first N posters (quick trials)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train several backbones under one protocol and write the study's table and figures."""
    from .compare import CompareConfig
    from .compare import compare as run_compare
    from .data import load_dataset
    from .predict import iter_image_paths

    try:
        named = {}
        for item in weights:
            name, sep, file = item.partition("=")
            if not sep or not file:
                raise ValueError(f"--weights takes NAME=FILE, not {item!r}")
            named[name.strip()] = file.strip()
        ds, _ = load_dataset(data, labels, images)
        if limit:
            ds = ds.subset(range(min(limit, len(ds))))
        cfg = CompareConfig(backbones=[b.strip() for b in backbones.split(",") if b.strip()], mode=mode, epochs=epochs,
                            batch_size=batch_size, image_size=_parse_size(image_size) if image_size else None,
                            test_fraction=test_fraction, seed=seed, weights=named, allow_random_init=allow_random_init)
        if new_posters is None:
            shipped = Path(__file__).resolve().parent / "samples"  # shipped with the package
            shared = Path("../shared/datasets/new-posters")
            new_posters = shared if shared.is_dir() else shipped if shipped.is_dir() else None
        posters = list(iter_image_paths([new_posters])) if new_posters else []
        run_compare(ds, cfg, out, cache_dir=cache_dir, resume=resume, progress=not quiet, new_posters=posters,
                           log=lambda msg: typer.secho(msg, err=True))
    except _user_errors() as exc:
        _fail(exc)
    typer.echo((Path(out) / "results.md").read_text())


@app.command()
def merge(
    output: Path = typer.Argument(..., help="The merged file to write (FILE.csv or FILE.jsonl); its shards are FILE.shard-I-of-N.*"),
    keep: bool = typer.Option(False, "--keep", help="Keep the shard files after merging."),
):
    """Join the outputs of `predict --shard I/N --output FILE` (all N shards) into FILE."""
    from .formats import merge_shards

    try:
        path, n = merge_shards(output, remove=not keep)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"wrote {path}: {n} poster(s)")


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    model: str = typer.Option("default", "--model", "-m"),
    check: Optional[List[Path]] = typer.Option(None, "--check", help="Posters to verify ONNX Runtime against PyTorch on (default: the shipped samples)."),
):
    """Export a model (backbone + head + sigmoid, preprocessing in the metadata) to ONNX, verified to 1e-4."""
    from .model import load_model
    from .onnx_engine import export_onnx
    from .predict import iter_image_paths

    try:
        if out.suffix.lower() != ".onnx":
            raise ValueError(f"{out}: the output file must end in .onnx")
        report = export_onnx(load_model(model), out, list(iter_image_paths(check)) if check else None)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"wrote {report['path']}  (ONNX Runtime vs PyTorch on {report['n_checked']} poster(s): max |diff| {report['max_abs_diff']:.1e})")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    model: str = typer.Option("default", "--model", "-m", help="Model directory, an exported .onnx file, or 'default'."),
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnx (as for predict)."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.001, help="Largest accepted file."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, help="Largest accepted image (width x height)."),
):
    """Start the web page and HTTP API (FastAPI + uvicorn): open http://HOST:PORT/."""
    from .inference import check_engine
    from .serve import run_server

    try:
        check_engine(engine)
    except _user_errors() as exc:
        _fail(exc)
    run_server(host, port, model=model, engine=engine, max_upload_mb=max_upload_mb, max_pixels=max_pixels)


@app.command()
def explain(
    poster: Path = typer.Argument(..., help="The poster image."),
    genre: str = typer.Option(..., "--genre", "-g", help="The genre to explain."),
    out: Path = typer.Option(..., "--out", help="PNG to write: the poster with the heatmap over it."),
    model: str = typer.Option("default", "--model", "-m"),
):
    """Grad-CAM heatmap of the regions of POSTER that drove GENRE's score."""
    from .explain import explain_png
    from .images import load_rgb
    from .model import atomic_bytes, load_model

    try:
        png, score = explain_png(load_model(model), load_rgb(poster), genre)
        atomic_bytes(out, png)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"wrote {out}  ({genre} score {score:.3f})")


@data_app.command("check")
def data_check(
    data: Optional[Path] = typer.Argument(None, help="Dataset folder (train.csv + Images/)."),
    labels: Optional[Path] = typer.Option(None, "--labels"),
    images: Optional[Path] = typer.Option(None, "--images"),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Skip decoding every image (faster)."),
):
    """Report on a dataset: posters, labels per genre, duplicates, missing and unreadable images."""
    from .data import load_dataset

    try:
        _, report = load_dataset(data, labels, images, skip_bad=True, verify_images=not no_decode)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(json.dumps(report.to_dict(), indent=2) if fmt == "json" else report.to_text())


@data_app.command("build-extra")
def data_build_extra(
    labels_repo: Path = typer.Option(..., "--labels-repo", help="Clone of d-misra/Multi-label-movie-poster-genre-classification."),
    images_repo: Path = typer.Option(..., "--images-repo", help="Clone (or bare git dir) of srijonsarkar/Movie-Genre-Prediction."),
    study: Path = typer.Option(..., "--study", help="The study's dataset (laxmimerit/Movies-Poster_Dataset): train.csv + Images/."),
    out: Path = typer.Option(..., "--out", help="Folder to write train.csv + Images/ into (a rerun resumes)."),
):
    """Build the extra training set (as ../shared/datasets/extra-posters) from clones of its public sources."""
    from .build_extra import build_extra_set

    try:
        report = build_extra_set(labels_repo, images_repo, study, out)
    except _user_errors() as exc:
        _fail(exc)
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
