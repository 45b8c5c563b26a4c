"""Progress and log output on stderr (stdout stays clean for JSON); no TensorFlow.

`progress(iterable, desc, total)` shows a tqdm bar when tqdm is installed and stderr is a
terminal (or a plain line every few seconds otherwise); `info(msg)` prints a log line.
Both are silenced by `--quiet`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
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


_WARNED: set = set()


def warn_once(msg: str) -> None:
    """`warn`, unless this very message was already given in this run (`new_run`)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        warn(msg)


def new_run() -> None:
    """Start a run (one command): `warn_once` messages may be given again."""
    _WARNED.clear()


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


@contextlib.contextmanager
def native_output_captured(log):
    """Discard native writes to stdout and collect native writes to stderr into `log` (a list):
    converters and interpreters print there from C++, past Python's `sys.stderr`."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved_out, saved_err = os.dup(1), os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    capture = tempfile.TemporaryFile()
    try:
        os.dup2(devnull, 1)
        os.dup2(capture.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, devnull):
            os.close(fd)
        capture.seek(0)
        log.append(capture.read().decode(errors="replace"))
        capture.close()


_TENSORFLOW_BANNER = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
                      "Created TensorFlow Lite XNNPACK delegate")


@contextlib.contextmanager
def quiet_converter(log=None):
    """Keep converter chatter ('Saved artifact at', signatures, native prints) off the
    terminal; native diagnostics are collected into `log` when given."""
    import logging
    import warnings

    log = [] if log is None else log
    with contextlib.redirect_stdout(io.StringIO()), native_output_captured(log), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("absl", "tensorflow", "tf2onnx", "")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@contextlib.contextmanager
def native_banners_dropped():
    """Run a block with TensorFlow / TFLite start-up notices (the absl preamble, the oneDNN
    notice, 'Created TensorFlow Lite XNNPACK delegate') kept off stderr; other lines pass."""
    log: list = []
    try:
        with native_output_captured(log):
            yield
    finally:
        for line in "".join(log).splitlines():
            if line.strip() and not any(marker in line for marker in _TENSORFLOW_BANNER):
                print(line, file=sys.stderr)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up banner (the absl preamble and the oneDNN notice,
    which its log-level variables do not silence) kept off stderr; other native lines pass."""
    if "tensorflow" in sys.modules:
        return
    with native_banners_dropped():
        import tensorflow  # noqa: F401
