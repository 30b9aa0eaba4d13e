"""Typed errors. Every error about a file names the file and the problem."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike


class EofmError(Exception):
    """Base class of every error eofm raises on purpose."""


class ConfigError(EofmError, ValueError):
    """A configuration value or command-line argument is invalid."""


class DataError(EofmError, ValueError):
    """A data file or folder cannot be used. The message names the path and the problem."""

    def __init__(self, path: str | PathLike[str] | None, problem: str, hint: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.hint = hint
        where = f"{self.path}: " if self.path else ""
        message = f"{where}{problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class CorruptFileError(DataError):
    """A file exists but cannot be decoded (truncated, wrong format, zero-size...)."""


class BandMismatchError(DataError):
    """A file does not hold the bands that were asked for."""

    def __init__(
        self,
        path: str | PathLike[str] | None,
        expected: Sequence[str],
        found: Sequence[str],
        problem: str | None = None,
    ):
        self.expected = tuple(expected)
        self.found = tuple(found)
        text = problem or "bands do not match"
        self.reason = text  # the problem without the expected/found lists
        super().__init__(
            path,
            f"{text}: expected {list(self.expected)}, found {list(self.found)}",
        )


class InvalidValuesError(DataError):
    """An image holds values that cannot be trained on (all NaN, infinite...)."""


class MissingLabelError(DataError):
    """A sample has no label where the dataset kind needs one."""


class EmptyDatasetError(DataError):
    """A folder, glob or index matched no usable sample."""


class UnknownNameError(EofmError, KeyError):
    """A name (sensor, band, dataset, model) is not registered."""

    def __init__(self, kind: str, name: str, known: Sequence[str]):
        self.kind = kind
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(self.known))}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class CheckpointError(EofmError, ValueError):
    """A checkpoint or model file cannot be loaded safely or does not fit the model."""
