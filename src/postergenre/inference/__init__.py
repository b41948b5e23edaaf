"""Inference: a model and posters in, genres with scores out.

- :mod:`.scorer`: the ``Scorer`` protocol and ``load_scorer``, the one way to get a scorer
  (PyTorch or ONNX Runtime).
- :mod:`.onnx_engine`: the verified ONNX export and its cache; :mod:`.onnx_scorer`: the
  torch-free ONNX Runtime scorer and the export's cache key.
- :mod:`.int8`: the int8 engine (static quantization, a plan per CPU); :mod:`.int8_head`: the
  head tuned on the int8 model's own features, for the plan that quantizes every block.
- :mod:`.predict`: prediction and evaluation over files (streamed, in order, errors per file).
- :mod:`.batch`: the predict command's job (``run_predictions``): output files, resume, shards, merge.
- :mod:`.formats`: the per-poster result record, the output formats, the streamed writer.
- :mod:`.ray_runner`: ``predict --cluster ray`` on Ray Data (an optional extra): the sources walked
  on the driver, one actor per core scoring as ``predict`` does; :mod:`.ray_output`: its
  ``.jsonl``/``.parquet`` output, written under a temporary name and moved into place, and resume.
- :mod:`.pipelines`: ``postergenre.pipeline()``, genres with scores in one call.

May import: ``errors``, ``_io``, ``_export``, ``distributed``, ``data``, ``backbones``, ``text``,
``modeling``. Never ``training`` (its sibling: neither imports the other), ``study`` or ``app``.
"""
