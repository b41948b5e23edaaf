"""A head for the int8 engine: the fp32 head fitted again on the int8 model's own features.

Quantizing every block moves the features the head reads (the stage statistics and the pooled
head convolution); with the fp32 head that cost the built-in model 0.005 validation mAP on a VNNI
CPU. Everything before the head is frozen, so the cure is cheap: run the int8 model once over
the training posters, keep the head's input (``HEAD_INPUT``, ``(N, D)`` float32), and tune a copy
of the head on it for a few epochs at a low learning rate, keeping the epoch with the best
validation mAP as training does, and fit its calibration again on validation. The head's
standardisation stays as it was. The tuned tensors are saved as ``int8_head.safetensors`` in the model folder and swapped
into the int8 file when it is built (:func:`postergenre.inference.int8.build_int8`).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

HEAD_INPUT = "/model/backbone/Concat_output_0"  # the export's name for the head's input
HEAD_FILE = "int8_head.safetensors"
# Chosen on validation (scratch runs on the int8 features): lr 1e-4 peaked at the first epoch and
# 1e-5 was slower for the same mAP; soft targets from the fp32 model did worse than the labels;
# the loss through the calibration 0.3789 mAP, on the raw logits 0.3783.
RECIPE = {"epochs": 5, "lr": 3e-5, "batch_size": 64, "weight_decay": 0.05, "seed": 0}


def head_inputs(model_path: str | Path, paths: Sequence[str | Path], preprocess, batch_size: int = 32) -> np.ndarray:
    """The head's input ``(N, D)`` float32 for posters ``paths`` under the ONNX file ``model_path``
    (fp32 or int8). A poster that cannot be read is an error naming it: this is for datasets."""
    import onnx
    import onnxruntime as ort

    from ..data.images import decoded_batches
    from ..errors import ImageLoadError

    proto = onnx.load(str(model_path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(HEAD_INPUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out = None
    for idx, batch, errors in decoded_batches([str(p) for p in paths], preprocess, batch_size):
        if errors:
            i, message = next(iter(errors.items()))
            raise ImageLoadError(f"{paths[i]}: {message}")
        features = session.run([HEAD_INPUT], {"image": batch})[0]
        if out is None:
            out = np.zeros((len(paths), features.shape[1]), np.float32)
        out[idx] = features
    return out if out is not None else np.zeros((0, 0), np.float32)


def tune_head(model, features: np.ndarray, y: np.ndarray, known: np.ndarray | None, val_features: np.ndarray,
              val_y: np.ndarray, recipe: dict = RECIPE) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Tune a copy of ``model``'s head (a :class:`~postergenre.modeling.model.PosterGenreModel`)
    on ``features`` ``(N, D)`` with labels ``y`` ``(N, G)`` (``known``: 1 where a label is known,
    None: all) with binary cross-entropy of the scores as deployed (through the model's
    calibration); keep the epoch with the best validation mAP, then fit the calibration again on
    validation, of the model's kind, as training does (kept as it was, the tuned head's scores
    ran 0.02 high on average: validation ECE 0.023 against 0.007). Returns the head and calibration tensors named as in the export
    (``model.head.net.1.weight``, ..., ``model.calibration.scale``) and one row per epoch
    (``epoch``, ``loss``, ``val_mAP``, ``val_micro_recall_at_3`` of the uncalibrated head)."""
    import torch
    import torch.nn.functional as F

    from ..modeling import metrics as M
    from ..modeling.calibration import fit_platt, fit_temperature
    from ..modeling.epochs import BestEpoch, StepPlan, shuffled_batches, train_epoch

    torch.manual_seed(recipe["seed"])  # dropout
    gen = torch.Generator().manual_seed(recipe["seed"])
    head, calibrate = copy.deepcopy(model.head).float().cpu(), model.calibration.cpu()
    x, t = torch.from_numpy(features), torch.from_numpy(np.asarray(y, np.float32))
    w = torch.ones_like(t) if known is None else torch.from_numpy(np.asarray(known, np.float32))
    xv = torch.from_numpy(val_features)
    # AdamW with one cosine step per epoch, in fp32: the step every head loop runs.
    step = StepPlan(optimizer="adamw", lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                    schedule="cosine_epoch").build(head, recipe["epochs"])
    history, keeper = [], BestEpoch(patience=recipe["epochs"] + 1)
    for epoch in range(1, recipe["epochs"] + 1):
        losses = train_epoch(step, shuffled_batches(len(x), recipe["batch_size"], gen),
                             lambda b: F.binary_cross_entropy_with_logits(calibrate(step.forward(x[b])), t[b], weight=w[b]))
        step.end_epoch()
        head.eval()
        with torch.no_grad():
            logits = head(xv).numpy()
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "val_mAP": M.macro_average_precision(val_y, logits),
               "val_micro_recall_at_3": M.micro_recall_at_k(val_y, logits, 3)}
        history.append(row)
        keeper.update(row, logits, head)
    best_logits = keeper.restore_best(head)
    tensors = {f"model.head.{k}": v.numpy().copy() for k, v in head.state_dict().items() if k.startswith("net.")}
    kind = model.calibration.kind
    if kind in ("platt", "temperature"):
        cal = (fit_platt if kind == "platt" else fit_temperature)(best_logits, val_y)
        tensors |= {"model.calibration.scale": cal.scale.numpy(), "model.calibration.bias": cal.bias.numpy()}
    return tensors, history


def fit_int8_head(model_dir: str | Path, train: tuple, val: tuple, blocks: Sequence[int], recipe: dict = RECIPE,
                  cache_dir: str | Path | None = None) -> dict:
    """Fit the int8 head of the model in ``model_dir`` for int8 ``blocks`` and write it to
    ``<model_dir>/int8_head.safetensors`` (atomically). ``train`` = ``(paths, y, known)`` of
    training posters, ``val`` = ``(paths, y)`` of validation posters (it picks the epoch).
    Returns the ``vnni`` plan's section (blocks, head file, recipe, per-epoch history)."""
    from safetensors.numpy import save

    from .._io import atomic_bytes
    from .onnx_scorer import sample_posters

    model, (features, val_features, sample_features) = _int8_head_inputs(
        model_dir, blocks, (train[0], val[0], sample_posters()), cache_dir)
    tensors, history = tune_head(model, features, train[1], train[2], val_features, val[1], recipe)
    os.chmod(atomic_bytes(Path(model_dir) / HEAD_FILE, save(tensors)), 0o644)  # a file of the model folder, shipped with it
    return {"blocks": list(blocks), "head": HEAD_FILE, "recipe": dict(recipe), "n_train": len(features),
            "history": history, "sample_scores": _scores_with(model, tensors, sample_features)}


def _int8_head_inputs(model_dir: str | Path, blocks: Sequence[int], poster_lists: Sequence[Sequence], cache_dir) -> tuple:
    """The model in ``model_dir``, and the head's input ``(N, D)`` for each list of posters in
    ``poster_lists`` under the int8 file of ``blocks`` (built in a scratch folder, fp32 head)."""
    from ..modeling.model import load_model
    from .int8 import RANGES_FILE, build_int8
    from .scorer import load_scorer

    model_dir = Path(model_dir)
    model, fp32 = load_model(model_dir), load_scorer(model_dir, "onnx", cache_dir=cache_dir)
    with tempfile.TemporaryDirectory(prefix="postergenre-int8-head-") as scratch:
        int8 = Path(scratch) / "int8.onnx"
        build_int8(fp32.path, model_dir / (model.config.int8 or {}).get("ranges", RANGES_FILE), blocks, int8)
        return model, [head_inputs(int8, posters, fp32.preprocess) for posters in poster_lists]


def _scores_with(model, tensors: dict[str, np.ndarray], features: np.ndarray) -> list:
    """Scores ``(N, G)`` (5 decimals) of ``model``'s head and calibration with ``tensors`` put in, on head inputs ``features``."""
    import torch

    head, calibration = copy.deepcopy(model.head).float().cpu().eval(), copy.deepcopy(model.calibration).cpu()
    for module, prefix in ((head, "model.head."), (calibration, "model.calibration.")):
        module.load_state_dict({k.removeprefix(prefix): torch.from_numpy(v) for k, v in tensors.items()
                                if k.startswith(prefix)}, strict=False)  # the head's standardisation stays the fp32 head's
    with torch.no_grad():
        return np.round(torch.sigmoid(calibration(head(torch.from_numpy(features)))).numpy(), 5).tolist()


def recorded_sample_scores(model_dir: str | Path, blocks: Sequence[int], cache_dir: str | Path | None = None) -> list:
    """The scores ``(6, G)`` of the model's int8 head (``int8_head.safetensors``) on the sample
    posters, computed by PyTorch on the int8 ``blocks``' features: what the built int8 file must
    reproduce (:func:`postergenre.inference.int8.build_int8`'s ``reference``)."""
    from safetensors.numpy import load_file

    from .onnx_scorer import sample_posters

    model, (features,) = _int8_head_inputs(model_dir, blocks, (sample_posters(),), cache_dir)
    return _scores_with(model, load_file(str(Path(model_dir) / HEAD_FILE)), features)
