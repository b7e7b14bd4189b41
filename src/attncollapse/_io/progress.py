"""Progress lines: tqdm on a terminal, one plain line every few seconds in a log."""

from __future__ import annotations

import sys
import time
from typing import Any


class PlainProgress:
    """A progress bar for logs: one plain line every `every` seconds (and at the end)
    instead of tqdm's carriage-return redraws, which fill a log file with thousands of
    partial lines. Same calls as the tqdm bar it replaces: update, set_postfix, close."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", every: float = 10.0, stream=None,
                 clock=None, unit: str = "step"):
        """`clock`: seconds as a float (default `time.monotonic`; tests pass a fake one);
        `unit`: what is counted ("step", "image")."""
        self.total, self.n, self.desc, self.every, self.unit = total, initial, desc, every, unit
        self.stream = stream or sys.stderr
        self._clock = clock or time.monotonic
        self._t0 = self._last = self._clock()
        self._n0, self._postfix = initial, ""
        self._said: tuple | None = None  # (step, postfix) of the last line printed

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.every:
            self._print()

    def set_postfix(self, **kw: Any) -> None:
        self._postfix = " ".join(f"{k} {v}" for k, v in kw.items())

    def close(self) -> None:
        if (self.n != self._n0 or self._postfix) and self._said != (self.n, self._postfix):
            self._print()

    def _print(self) -> None:
        now = self._clock()
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        pct = 100.0 * self.n / self.total if self.total else 100.0
        print(f"{self.desc}: {self.unit} {self.n}/{self.total} ({pct:.0f}%) {rate:.2f} {self.unit}/s "
              f"{self._postfix}".rstrip(),
              file=self.stream, flush=True)
        self._last, self._said = now, (self.n, self._postfix)


def progress(total: int, initial: int = 0, desc: str = "", *, unit: str = "step", **kw: Any):
    """tqdm on a terminal; `PlainProgress` when stderr is a file or a pipe (a log)."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, **kw)
    return PlainProgress(total, initial, desc, unit=unit)
