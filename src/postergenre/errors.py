"""The errors a user can cause and fix. The CLI prints them as one line (exit 2); anything
else is a bug in postergenre and shows its traceback.

Each also derives from the built-in type it was before (``ValueError``, ``RuntimeError``,
``OSError``) so code that caught those keeps working.
"""

from __future__ import annotations

from pathlib import Path


class PosterGenreError(Exception):
    """Base of every user-facing error; ``str(err)`` names the file or option and the problem."""


class UsageError(PosterGenreError, ValueError):
    """An option or argument has a value the command cannot use."""


class DatasetError(PosterGenreError, ValueError):
    """The dataset cannot be used as it is; the message names the file, row or column."""


class ModelError(PosterGenreError, ValueError):
    """A model directory is missing, damaged, unsafe or does not fit this version."""


class ImageLoadError(PosterGenreError, ValueError):
    """A file could not be turned into an RGB image. ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class WeightsUnavailable(PosterGenreError, RuntimeError):
    """Pretrained weights for a backbone cannot be had (offline and no local file)."""


class ExportError(PosterGenreError, RuntimeError):
    """The export could not be made, or ONNX Runtime does not reproduce PyTorch's scores."""


class OutputError(PosterGenreError, OSError):
    """A file the user asked for cannot be written (or an input file cannot be opened)."""


class UnknownName(UsageError, KeyError):
    """A name (backbone, genre, ...) that is not among the known ones; the message lists them."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
