"""Poster text, the second signal: what OCR reads on a poster and how it becomes genre evidence.

- :mod:`.ocr`: reading a poster's words (RapidOCR, ONNX models from the wheel) and the OCR cache,
  keyed by image content and OCR settings, filled resumably by worker processes.
- :mod:`.ngrams`: character n-gram TF-IDF features (fitted with scikit-learn, applied in NumPy
  so that inference imports neither scikit-learn nor PyTorch).
- :mod:`.embedding`: the MiniLM sentence embedding, run in ONNX Runtime (exported once from the
  package's weights, checked against the PyTorch model it came from).
- :mod:`.branch`: the text branch of a model: per-genre text evidence and its late fusion with
  the image scores, fitted on validation; saved in the model directory.

May import: ``errors``, ``_io``, ``_export``, ``data`` (image decoding). Never ``modeling`` or
anything above it.
"""
