"""The standard streams of the command line, made safe to write to.

A closed standard stream (`>&-`) is reopened on the null device before anything runs, so
output is dropped and no file the command opens takes its descriptor. A reader that goes
away (`| head`) ends the command quietly, as Unix tools do: stdout is pointed at the null
device so nothing more fails, and no 'Broken pipe' message is printed.
"""

from __future__ import annotations

import os
import select
import sys

_STREAMS = ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w"))


def reopen_closed() -> None:
    """Give every closed standard descriptor (0, 1, 2) the null device, in order."""
    for fd, name, mode in _STREAMS:
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False, errors="replace"))


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end was closed."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):  # no poll, no descriptor (captured), closed
        return False
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in events)


def drop_stdout() -> None:
    """Send what stdout still holds, and everything after, to the null device."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.stdout.fileno())
    finally:
        os.close(null)


def flush_stdout() -> None:
    """Flush stdout; a reader that went away is not an error (see `drop_stdout`)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        drop_stdout()
