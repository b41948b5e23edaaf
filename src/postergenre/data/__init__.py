"""Data: the posters and their labels, checked and decoded (the first stage).

- :mod:`.dataset`: the dataset format (``train.csv`` + ``Images/``), its quirks and report,
  stratified splits, extra training sources.
- :mod:`.images`: robust decoding of any image file to upright RGB, preprocessing to the model's
  input, and the posters the Python API takes (PIL images, paths, bytes) as an input batch.
- :mod:`.pixel_cache`: every poster decoded once to the model's input size into a uint8 cache
  on disk (keyed by content and size, resumable), for end-to-end training.
- :mod:`.build_extra`: ``postergenre data build-extra``, the extra poster set rebuilt from its
  public sources.

May import: ``errors``, ``_io``. Nothing else of the package: every other stage builds on this one.
"""
