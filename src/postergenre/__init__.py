"""postergenre: predict a movie's genres from its poster.

The entry points a user calls, all importable from here (each loads its stage on first use, so
``import postergenre`` stays light and the one-poster ONNX path never imports PyTorch):

- ``pipeline(model="default", engine="auto")``: genres with scores in one call (:mod:`.inference.pipelines`);
- ``load_model(path)``: a model directory as a PyTorch model (:mod:`.modeling.model`);
- ``load_scorer(path, engine)``: a model ready to score, PyTorch or ONNX Runtime (:mod:`.inference.scorer`);
- ``predict_paths(scorer, inputs)``, ``evaluate_model(...)``: prediction and evaluation over files (:mod:`.inference.predict`);
- ``run_predictions(inputs, output=...)``: ``postergenre predict`` as one call (:mod:`.inference.batch`);
- ``load_dataset(folder)``, ``Recipe(...)``, ``train(dataset, recipe, out)``: training (:mod:`.data.dataset`, :mod:`.training`).

The stages, each a subpackage that imports only the ones before it (``training`` and
``inference`` are siblings; the top-level ``errors``, ``_io``, ``_export`` and ``distributed``
import nothing of the stages): data -> backbones -> text -> modeling -> training | inference ->
study -> app.
"""

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "pipeline": "inference.pipelines",
    "load_model": "modeling.model",
    "load_scorer": "inference.scorer",
    "predict_paths": "inference.predict",
    "evaluate_model": "inference.predict",
    "run_predictions": "inference.batch",
    "load_dataset": "data.dataset",
    "Recipe": "training.recipe",
    "train": "training.train",
}
__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        from importlib import import_module

        value = getattr(import_module(f".{_ENTRY_POINTS[name]}", __name__), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'postergenre' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENTRY_POINTS))
