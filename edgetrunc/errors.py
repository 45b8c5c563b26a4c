"""Exceptions with a meaning for the command line (no TensorFlow).

`InputError` is anything the user can cause (missing or corrupt file, wrong shape, bad
option): the CLI prints its message as one line and exits 2. `CheckFailed` means the
check itself ran and failed (parity, accuracy): exit 1.
"""


class EdgetruncError(Exception):
    """Base class of edgetrunc's own errors."""

    exit_code = 2


class InputError(EdgetruncError, ValueError):
    """Bad input or usage: one clear line naming the input and what was expected."""

    exit_code = 2


class CheckFailed(EdgetruncError):
    """A check ran and failed (parity, accuracy target)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), else its type:
    what a one-line error shows of a library's own exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
