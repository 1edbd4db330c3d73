"""The errors every floor of the suite raises or catches.

They decide what a result cell becomes: an absent input (``DatasetMissing``,
``WeightsUnavailable``) skips a cell, or keeps the one stored earlier; a bad input
(``DatasetError`` and any other error) fails it, with a message that names the file.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset folder or file that cannot be read as one; the message names the file."""


class DatasetMissing(LookupError):
    """A registered dataset that is not under the data root: its cells are skipped, not failed."""


class WeightsUnavailable(LookupError):
    """The requested weights do not exist here (not trained by the suite yet, or an official
    checkpoint that is not under the data root): the cell is skipped, not failed."""


class UnknownMethod(KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])
