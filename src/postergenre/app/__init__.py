"""App: what a user runs, on top of every other stage (the last one).

- :mod:`.cli`: the ``postergenre`` command (parses, calls the API, prints); :mod:`._clikit`: its
  plumbing (help pages, choice options, one-line user errors).
- :mod:`.serve`: the web page and HTTP API (FastAPI); ``web/`` holds the page's HTML, JS and CSS;
  :mod:`.limits`: request bodies capped as they stream in; :mod:`.batcher`: one inference thread.
- :mod:`.explain`: Grad-CAM heatmaps (``postergenre explain``, ``/api/explain``).

May import: ``errors``, ``_io``, ``distributed``, ``data``, ``backbones``, ``text``, ``modeling``,
``training``, ``inference``, ``study``. Nothing imports it but ``__main__``.
"""
