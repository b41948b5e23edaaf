"""MODEL.md, the model card written beside the weights: what the model is, how it was made,
how well it did on validation (and on the test part, when one was kept aside)."""

from __future__ import annotations

from . import metrics as M
from .config import ModelConfig, TrainingRecord


def _metrics_table(top3: dict, thresholds: dict) -> str:
    rows = [f"| {k} | {top3.get(k, float('nan')):.4f} | {thresholds.get(k, float('nan')):.4f} |" for k in M.SUMMARY_KEYS]
    return "| metric | top-3 | thresholds |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def _sources_text(sources: list[dict]) -> str:
    if len(sources) < 2:
        return ""
    lines = ["Sources (validation and test posters come only from the first; the others only join training):", ""]
    for s in sources:
        dropped = (f"; {s['n_offered']} offered, {s['dropped_same_id']} dropped for an Id already used, "
                   f"{s['dropped_same_image']} for an identical image" if "n_offered" in s else "")
        unknown = f"; unknown (masked) genres: {', '.join(s['unknown_genres'])}" if s.get("unknown_genres") else ""
        lines.append(f"- `{s['name']}`: {s['n_posters']} posters{dropped}{unknown}")
    return "\n".join(lines) + "\n"


def _calibration_text(cfg: ModelConfig) -> str:
    if not cfg.calibrated:
        return "raw sigmoid outputs (not calibrated)."
    return (f"probabilities: per-genre {cfg.calibration['kind']} calibration of the logits, fitted on the validation part "
            "(`ece` below is the expected calibration error over every poster x genre score, 15 bins).")


def _recipe_text(t: TrainingRecord) -> str:
    recipe = "\n".join(f"| {k} | {v} |" for k, v in t.recipe.items() if k not in ("device", "workers"))
    run = f"```\n{t.command}\n```\n" if t.command else ""
    return f"{run}\n| recipe | value |\n|---|---|\n{recipe}\n"


def _training_text(t: TrainingRecord) -> str:
    d, r = t.data, t.recipe
    test = "" if not t.test_metrics else (
        f"\n## Test metrics ({d.get('n_test')} held-out posters)\n"
        "Kept aside before training; nothing (epoch, thresholds, recipe choice) was tuned on them.\n\n"
        + _metrics_table(t.test_metrics, t.test_metrics_thresholds or {}))
    return f"""## Training
{_recipe_text(t)}
Data: {d.get('n_posters')} labelled posters from `{d.get('source') or 'a dataset'}`, {d.get('n_train')} train / {d.get('n_val')} validation / {d.get('n_test', 0)} test
(multi-label iterative stratification, seed {r.get('seed')}; split fingerprint `{d.get('split_fingerprint')}`).
{_sources_text(d.get('sources', []))}
Training time: {t.training_seconds} s (feature extraction {t.feature_extraction_seconds} s).
The best epoch by validation mAP is kept, so the validation figures are slightly optimistic.

## Validation metrics ({d.get('n_val')} posters not trained on)
{_metrics_table(t.validation_metrics, t.validation_metrics_thresholds)}{test}"""


def _text_branch_text(text: dict | None) -> str:
    if not text:
        return "- Text: none (image only).\n"
    ocr, n = text["ocr"], text.get("posters_with_text", {})
    encoders = " + ".join(e["kind"] + (f" ({e['model']})" if "model" in e else "") for e in text["encoders"])
    rows = [f"| {where}, {part.replace('_', ' ')} | {m['micro_recall_at_3']:.4f} | {m['mAP']:.4f} | {m['ece']:.4f} |"
            for where in ("validation", "test") for part, m in text.get(where, {}).items()]
    return (f"- Text (`--text on`): OCR with {ocr['engine']} (detector side {ocr['det_limit_side_len']} {ocr['det_limit_type']}, "
            f"lines of confidence >= {ocr['min_score']}); evidence: {encoders}, {text['evidence']}; fusion: {text['fusion']}. "
            f"Text was read on {n.get('train')} of {n.get('train_total')} training and {n.get('val')} of {n.get('val_total')} "
            "validation posters; a poster without text keeps its image scores.\n\n"
            "| text branch | micro recall@3 | mAP | ECE |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
            "(validation, text on: the fusion was fitted there, so in sample.)\n")


def _backbone_text(cfg: ModelConfig) -> str:
    """Which weights the backbone runs with: the package's, the package's with tuned blocks on top, or its own."""
    b = cfg.backbone
    start = f"{b.weight_source}; weights {b.weights_origin}, id `{b.weights_id}`"
    if b.in_artifact and cfg.mode == "finetune":
        return f"`{b.name}`, every layer tuned end to end, all its weights in `model.safetensors` (started from {start})"
    if b.in_artifact:
        return f"`{b.name}` ({start}), all its weights in `model.safetensors`"
    if b.tuned:
        return (f"`{b.name}` ({start}), with {', '.join(f'`{t}`' for t in b.tuned)} tuned and stored in "
                "`model.safetensors`, the rest read from the installed weights")
    return f"`{b.name}` ({start})"


def _blocks(ids) -> str:
    ids = list(ids or [])
    if len(ids) > 1 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"MBConv blocks {ids[0]}-{ids[-1]}"
    return f"MBConv block{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}" if ids else "the default MBConv blocks"


def _int8_text(int8: dict | None) -> str:
    """The int8 engine's plans and the figures recorded for them (the ``int8`` config section)."""
    if not int8:
        return ""
    vnni, n_cal = int8.get("vnni") or {}, int8.get("calibration_posters")
    ranges = f"activation ranges measured on {n_cal} training posters (`{int8.get('ranges')}`)" if n_cal else f"ranges `{int8.get('ranges')}`"
    plans = [f"without VNNI, {_blocks(int8.get('blocks'))} in int8 with the fp32 head"]
    if vnni:
        trained = f" of {vnni['head_trained_on']} training posters" if vnni.get("head_trained_on") else ""
        plans.append(f"with VNNI, {_blocks(vnni.get('blocks'))} in int8 with `{vnni['head']}` (the head tuned again on the "
                     f"int8 model's own features{trained}, calibrated again on validation)")
    rows = []
    for part in ("validation", "test"):
        fig = int8.get(part) or {}
        for name, key in (("fp32", "fp32"), ("int8, without VNNI", "int8")):
            if key in fig:
                rows.append((part, name, fig[key]))
        if part in vnni:
            rows.append((part, "int8, with VNNI", vnni[part]))
    table = "" if not rows else ("\n| int8 engine | micro recall@3 | mAP |\n|---|---|---|\n" + "\n".join(
        f"| {part}, {name} | {m['micro_recall_at_3']:.4f} | {m['mAP']:.4f} |" for part, name, m in rows) + "\n")
    default = "the default engine on CPU" if int8.get("default") else "used on request: `--engine int8`"
    return (f"\n- int8 engine ({default}): ONNX Runtime static quantization ({int8.get('format', 'QDQ')}), {ranges}; "
            f"{'; '.join(plans)}.\n{table}")


def model_card(cfg: ModelConfig) -> str:
    """The card's Markdown for a trained model (``cfg.training`` set)."""
    pp, h = cfg.preprocess, cfg.head
    return f"""# Model card: {cfg.name}

Predicts a movie's genres ({len(cfg.genres)} genres) from its poster. Multi-label: sigmoid scores per genre.

- Backbone: {_backbone_text(cfg)}, mode `{cfg.mode}`
- Input: whole poster resized to {pp.size[0]}x{pp.size[1]} (aspect squashed), normalised with mean {list(pp.mean)} / std {list(pp.std)}
- Head: `{h.kind}` (hidden {h.hidden}, dropout {h.dropout}{f', {h.members} members' if h.members > 1 else ''})
- Genres: {', '.join(cfg.genres)}
- Default decision: top-3 (the study's rule); `--decision thresholds` uses per-genre thresholds tuned for F1 on validation.
- Scores: {_calibration_text(cfg)}
{_text_branch_text(cfg.text)}{_int8_text(cfg.int8)}
{_training_text(cfg.training or TrainingRecord())}
`micro_recall_at_3` is our reading of the study's "accuracy": true genres found in the top 3 / all true genres.

## Limits
Trained on IMDb posters of mostly Hollywood films from 1980-2015; genres with few examples
(Reality-TV, News, Short, Western) are barely learnt. Posters from other eras or markets may score worse.
"""
