"""postergenre: predict a movie's genres from its poster.

``postergenre.pipeline()`` is the one-call API (see :mod:`postergenre.pipelines`); importing
the package itself stays light (the pipeline's modules load on first use).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "pipeline":
        from .pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'postergenre' has no attribute {name!r}")
