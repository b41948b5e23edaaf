"""Study: the reproduction of "Multi-Label Image Classification using CNN" on its posters.

- :mod:`.compare`: several backbones, one protocol (same split), one table (``postergenre compare``).
- :mod:`.report`: the study's figures (loss curves, a training batch, predictions of new posters).

May import: ``errors``, ``_io``, ``data``, ``backbones``, ``text``, ``modeling``, ``training``,
``inference``. Never ``app``.
"""
