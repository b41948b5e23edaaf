"""Modeling: what a model is, how it is stored, and how it is judged.

- :mod:`.model`: backbone + head (+ calibration), ``load_model`` and saving the model directory.
- :mod:`.config`: ``config.json`` as typed records (``ModelConfig``, ``TrainingRecord``; old layouts load).
- :mod:`.artifact`: the model directory's files, read and checked without building the model.
- :mod:`.card`: ``MODEL.md``, the model card.
- :mod:`.calibration`: per-genre Platt / temperature calibration of the logits (and isotonic, to measure).
- :mod:`.decision`: top-k and per-genre threshold rules.
- :mod:`.losses`: training losses (BCE, class-balanced BCE, asymmetric loss).
- :mod:`.epochs`: one training step (optimizer, schedule, precision, clipping, EMA: a `StepPlan`
  chosen once per run) and one epoch for every loop, and the best-epoch keeper.
- :mod:`.metrics`: the metrics (scikit-learn); :mod:`.reliability`: the reliability diagram of any scores.
- :mod:`.scoring`: any scorer over image files (torch-free).

May import: ``errors``, ``_io``, ``data``, ``backbones``, ``text``. Never ``training``,
``inference`` or anything above them.
"""
