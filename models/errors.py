"""Error types with messages meant for the person who runs the workflow."""
from __future__ import annotations

from typing import Iterable, Sequence


class PerformerError(ValueError):
    """Base class: a clear, user-facing error about an input or a file."""


class MissingModelError(PerformerError, FileNotFoundError):
    """A weight file could not be found; the message names the folder and the file names tried."""

    def __init__(self, folder: str, candidates: Sequence[str], searched: Iterable[str], hint: str = ""):
        self.folder = folder
        self.candidates = list(candidates)
        self.searched = list(searched)
        where = ", ".join(self.searched) if self.searched else "(no directory is registered for it)"
        msg = (
            f"Missing model file: looked in model folder '{folder}' ({where}) for "
            f"{' or '.join(repr(c) for c in self.candidates)}, and found none."
        )
        if hint:
            msg += " " + hint
        super().__init__(msg)


class BadModelFileError(PerformerError):
    """A weight file exists but is not what the loader expects (corrupt, wrong family, ...)."""


class BadInputError(PerformerError):
    """An input tensor/sequence/setting does not fit; the message names the input and what was expected."""
