"""Progress of a long tool run: a ``tqdm`` bar on a terminal, periodic log lines otherwise.

``tqdm`` is optional: without it, or when stderr is not a terminal (systemd, a pipe, a log
file), a line like ``import: 120/500 photos (24%), 3 failed, 8.1/s, about 47 s left`` is
logged every ``interval_s``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import IO, Any, Iterator, Optional

log = logging.getLogger(__name__)

DEFAULT_LOG_INTERVAL_S = 10.0


def _tqdm_class() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """Counts settled items; ``done`` of ``total`` were settled before this run began."""

    def __init__(self, what: str, total: int, done: int = 0, unit: str = "photo",
                 interval_s: float = DEFAULT_LOG_INTERVAL_S,
                 stream: Optional[IO[str]] = None, bar: Optional[bool] = None) -> None:
        self.what = what
        self.total = total
        self.done = done
        self.failed = 0
        self._unit = unit
        self._interval_s = interval_s
        self._started = time.monotonic()
        self._last_log = self._started
        self._counted = 0  # settled by this run: the rate's numerator
        stream = stream if stream is not None else sys.stderr
        if bar is None:
            bar = bool(getattr(stream, "isatty", lambda: False)())
        tqdm = _tqdm_class() if bar else None
        self._bar = None
        if tqdm is not None:
            self._bar = tqdm(total=total, initial=done, desc=what, unit=unit, file=stream,
                             dynamic_ncols=True, smoothing=0.1)

    @contextlib.contextmanager
    def logging_redirected(self) -> Iterator[None]:
        """Log records go through the bar (so they do not tear it) while it is shown."""
        if self._bar is None:
            yield
            return
        try:
            from tqdm.contrib.logging import logging_redirect_tqdm
        except ImportError:  # tqdm < 4.38
            yield
            return
        with logging_redirect_tqdm():
            yield

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self._counted += 1
        if failed:
            self.failed += 1
        if self._bar is not None:
            self._bar.update(1)
            if failed:
                self._bar.set_postfix(failed=self.failed, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_log >= self._interval_s:
            self._last_log = now
            log.info("%s", self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self._started
        rate = self._counted / elapsed if elapsed > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"{self.what}: {self.done}/{self.total} {self._unit}s ({percent:.0f}%), "
                f"{self.failed} failed, {rate:.1f}/s")
        if rate > 0 and self.done < self.total:
            text += f", about {(self.total - self.done) / rate:.0f} s left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
