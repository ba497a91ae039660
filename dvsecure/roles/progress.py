"""A progress bar for long runs: tqdm on a terminal, nothing otherwise (logs and
--json output stay clean when stderr is not a TTY)."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, desc: str, unit: str = "query"):
        self.desc, self.unit, self._bar = desc, unit, None

    def start(self, total: int) -> None:
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
