"""Progress and log output on stderr (stdout stays clean for JSON); no TensorFlow.

`progress(iterable, desc, total)` shows a tqdm bar when tqdm is installed and stderr is a
terminal (or a plain line every few seconds otherwise); `info(msg)` prints a log line.
Both are silenced by `--quiet`.
"""

from __future__ import annotations

import contextlib
import sys
import time

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def info(msg: str) -> None:
    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def progress(iterable, desc: str = "", total: int | None = None, unit: str = "it"):
    """Wrap `iterable` with a progress bar on stderr (none when quiet)."""
    if _QUIET:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return _plain_progress(iterable, desc, total)
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr,
                dynamic_ncols=True, leave=False, disable=None)


def _plain_progress(iterable, desc, total):
    last = time.monotonic()
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last > 5:
            last = now
            print(f"{desc}: {i}/{total if total else '?'}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send stray prints of third-party converters (e.g. 'Saved artifact at') to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
