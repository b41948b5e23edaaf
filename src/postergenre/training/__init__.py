"""Training: a recipe and a dataset in, a model directory out.

- :mod:`.train`: training as prepare -> fit (frozen | tail | finetune) -> finalize; ``train``.
- :mod:`.recipe`: the training recipe, every choice of a run, its defaults and the split it implies.
- :mod:`.loops`: the training loops (head on features, end to end) and their epoch bookkeeping.
- :mod:`.tail`: mode ``tail``, the last blocks + head tuned on cached feature maps.
- :mod:`.checkpoint`: per-epoch checkpoints (atomic; ``--resume``).

May import: ``errors``, ``_io``, ``distributed``, ``data``, ``backbones``, ``text``, ``modeling``.
Never ``inference`` (its sibling: neither imports the other), ``study`` or ``app``.
"""
