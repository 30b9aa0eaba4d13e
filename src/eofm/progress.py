"""Progress that reads well everywhere: a tqdm bar on a terminal, plain lines in a file or pipe.

:func:`progress` is a drop-in for ``tqdm(...)``: same arguments (``iterable``, ``total``,
``desc``, ``unit``, ``disable``, ``initial``), same use (iterate it, ``update(n)``,
``set_postfix(...)``, ``close()``, ``with``). Where stderr is a terminal it returns a tqdm bar;
elsewhere (a log file, a pipe, CI) a :class:`PlainProgress` that writes one line at the start,
one every :data:`INTERVAL_S` seconds, and one at the end, with no carriage returns::

    embedding: 1200/5000 (24%), 35.2 img/s, 1:48 left

``$EOFM_PROGRESS`` forces the choice (``bar`` or ``plain``); ``$EOFM_PROGRESS_INTERVAL`` sets
the seconds between plain lines (``0``: a line at every update).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")

#: Seconds between two plain lines (``$EOFM_PROGRESS_INTERVAL`` overrides it).
INTERVAL_S = 10.0


def use_plain(stream: IO[str] | None = None) -> bool:
    """Whether progress goes out as plain lines: ``$EOFM_PROGRESS`` if set, else whether the
    stream (stderr) is not a terminal."""
    forced = os.environ.get("EOFM_PROGRESS", "").strip().lower()
    if forced in ("plain", "bar"):
        return forced == "plain"
    stream = stream if stream is not None else sys.stderr
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return True


def interval_s() -> float:
    """Seconds between plain lines: ``$EOFM_PROGRESS_INTERVAL`` or :data:`INTERVAL_S`."""
    text = os.environ.get("EOFM_PROGRESS_INTERVAL")
    try:
        return max(0.0, float(text)) if text else INTERVAL_S
    except ValueError:
        return INTERVAL_S


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:05``, ``1:02:03``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_line(
    desc: str | None,
    n: float,
    total: float | None,
    elapsed: float,
    unit: str = "it",
    postfix: str = "",
    *,
    rate_from: float = 0.0,
) -> str:
    """One progress line: ``desc: n/total (pct), rate unit/s, ETA left, postfix``."""
    head = f"{desc}: " if desc else ""
    parts = [head + (f"{n:g}/{total:g} ({100.0 * n / total:.0f}%)" if total else f"{n:g}")]
    done = n - rate_from
    if elapsed > 0 and done > 0:
        rate = done / elapsed
        parts.append(f"{rate:.1f} {unit}/s")
        if total and n < total:
            parts.append(f"{format_duration((total - n) / rate)} left")
    if postfix:
        parts.append(postfix)
    return ", ".join(parts)


class PlainProgress(Generic[T]):
    """A tqdm look-alike that writes plain lines (for files and pipes), rate-limited."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "it",
        disable: bool = False,
        initial: float = 0,
        file: IO[str] | None = None,
        every_s: float | None = None,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.disable = disable
        self.n: float = initial
        self.initial = initial
        self.file = file
        self.every_s = interval_s() if every_s is None else every_s
        self.postfix = ""
        self._start = time.monotonic()
        self._last = -float("inf")
        self._last_n: float | None = None
        self._closed = False
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        if self.disable:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        if self._last_n == self.n and not force:
            return
        self._last, self._last_n = now, self.n
        line = format_line(
            self.desc,
            self.n,
            self.total,
            now - self._start,
            self.unit,
            self.postfix,
            rate_from=self.initial,
        )
        stream = self.file if self.file is not None else sys.stderr
        print(line, file=stream, flush=True)

    def update(self, n: float = 1) -> None:
        """Count ``n`` more steps (a line is written when one is due)."""
        self.n += n
        self._emit()

    def set_postfix(
        self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        """Extra ``key=value`` fields for the next lines (as tqdm)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items()
        )

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        self._emit(force=True)

    def close(self) -> None:
        """Write the last line (once)."""
        if not self._closed:
            self._closed = True
            if self._last_n != self.n:
                self._emit(force=True)

    def __del__(self) -> None:  # as tqdm: a bar dropped without close() still ends its line
        with contextlib.suppress(Exception):  # interpreter shutdown: stderr may be gone
            self.close()

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> PlainProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable: Iterable[T] | None = None,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool = False,
    **kwargs: Any,
) -> Any:
    """``tqdm(iterable, total=..., desc=..., unit=..., disable=...)`` on a terminal, else a
    :class:`PlainProgress` with the same interface (``initial=`` and ``file=`` are passed
    on; other tqdm keywords are used by the bar only)."""
    if use_plain(kwargs.get("file")):
        return PlainProgress(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            disable=disable,
            initial=kwargs.get("initial", 0),
            file=kwargs.get("file"),
        )
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, **kwargs)
