"""Training: a recipe and a dataset in, a model directory out.

- :mod:`.train`: training as prepare -> fit (frozen | tail | finetune) -> finalize; ``train``.
- :mod:`.recipe`: the training recipe, every choice of a run, its defaults and the split it implies.
- :mod:`.loops`: the head's loop on cached features and the epoch bookkeeping every loop shares
  (``Fit``: what a loop needs of its run; ``History``); one step and one epoch for every loop are
  ``modeling.epochs``.
- :mod:`.finetune`: mode ``finetune``, the whole network on posters decoded once (held on the GPU
  when they fit), with the poster recipe or the study's.
- :mod:`.augment`: augmentation as one batched op on the device, and the plain model input.
- :mod:`.tail`: mode ``tail``, the last blocks + head tuned on cached feature maps.
- :mod:`.checkpoint`: per-epoch checkpoints (atomic; ``--resume``).

May import: ``errors``, ``_io``, ``distributed``, ``data``, ``backbones``, ``text``, ``modeling``.
Never ``inference`` (its sibling: neither imports the other), ``study`` or ``app``.
"""
