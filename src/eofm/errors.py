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
        import difflib

        close = difflib.get_close_matches(str(name), [str(k) for k in self.known], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(self.known))}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class CheckpointError(EofmError, ValueError):
    """A checkpoint or model file cannot be loaded safely or does not fit the model."""


class NonFiniteLossError(EofmError, FloatingPointError):
    """Training produced a NaN or infinite loss; the run stopped without saving bad weights.

    ``step`` is the optimiser step, ``checkpoint`` the last good checkpoint (if any)."""

    def __init__(self, message: str, step: int, checkpoint: str | PathLike[str] | None = None):
        self.step = int(step)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.reason = message
        text = message
        if self.checkpoint:
            text += f"; the last good checkpoint is {self.checkpoint} (continue with --resume)"
        super().__init__(text)


class NodeJoinError(EofmError, RuntimeError):
    """A multi-node run's process group did not form: a rank or node never joined in time."""
