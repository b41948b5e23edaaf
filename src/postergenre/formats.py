"""Output formats for prediction results and metrics. One entry per format in each registry."""

from __future__ import annotations

import csv
import io
import json
from typing import Callable

from .metrics import SUMMARY_KEYS


def predictions_table(results: list[dict], show: int = 3) -> str:
    """``endgame.jpg -> Action / Adventure / Sci-Fi   (Action 0.81, Adventure 0.62, ...)``."""
    lines = []
    for r in results:
        if r["error"]:
            lines.append(f"{r['path']} -> ERROR: {r['error']}")
            continue
        scores = {g["genre"]: g["score"] for g in r["genres"]}
        shown = r["predicted"] + [g["genre"] for g in r["genres"] if g["genre"] not in r["predicted"]][: max(0, show - len(r["predicted"]))]
        detail = ", ".join(f"{g} {scores[g]:.2f}" for g in shown)
        lines.append(f"{r['path']} -> {' / '.join(r['predicted'])}   ({detail})")
    return "\n".join(lines)


def predictions_json(results: list[dict]) -> str:
    return json.dumps(results, indent=2, ensure_ascii=False)


def predictions_csv(results: list[dict]) -> str:
    """One row per poster: path, predicted (``|``-joined), error, then one score column per genre."""
    genres = next((sorted(g["genre"] for g in r["genres"]) for r in results if r["genres"]), [])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["path", "predicted", "error", *genres])
    for r in results:
        scores = {g["genre"]: g["score"] for g in r["genres"]}
        w.writerow([r["path"], "|".join(r["predicted"]), r["error"] or "", *(scores.get(g, "") for g in genres)])
    return out.getvalue().rstrip("\n")


PREDICTION_FORMATS: dict[str, Callable[[list[dict]], str]] = {
    "table": predictions_table,
    "json": predictions_json,
    "csv": predictions_csv,
}


def metrics_table(m: dict) -> str:
    lines = [f"posters evaluated: {m['n_posters']}"]
    lines += [f"  {k:<18} {m[k]:.4f}" for k in SUMMARY_KEYS]
    lines.append("")
    lines.append(f"  {'genre':<12} {'AP':>6} {'F1':>6} {'support':>8}")
    for g, v in sorted(m["per_genre"].items(), key=lambda kv: -kv[1]["support"]):
        ap = f"{v['AP']:.3f}" if v["AP"] is not None else "  n/a"
        lines.append(f"  {g:<12} {ap:>6} {v['F1']:>6.3f} {v['support']:>8}")
    return "\n".join(lines)


METRICS_FORMATS: dict[str, Callable[[dict], str]] = {
    "table": metrics_table,
    "json": lambda m: json.dumps(m, indent=2),
}
