"""Exceptions with a meaning for the command line (no TensorFlow).

`InputError` is anything the user can cause (missing or corrupt file, wrong shape, bad
option): the CLI prints its message as one line and exits 2. An `InputError` about one
argument names it by its Python name (`param`); the CLI shows that name as its flag. A
library message never spells a flag: it names another parameter as `name=VALUE`
(`force=True`, `inputs=random`), which the CLI shows as the flag (`--force`,
`--inputs random`) through `InputError.lines_for`.
`CheckFailed` means the check itself ran and failed (parity, accuracy): exit 1.
"""

from __future__ import annotations


class EdgetruncError(Exception):
    """Base class of edgetrunc's own errors."""

    exit_code = 2


class InputError(EdgetruncError, ValueError):
    """Bad input or usage: one clear line naming the input and what was expected.

    `param` is the Python parameter the message is about, when the message starts with its
    name ("samples: expected a positive integer; got 0"); `naming(flag)` gives the message
    with that name shown as the caller knows it ("--samples: expected ...").
    """

    exit_code = 2
    param: str | None = None

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(message)
        self.param = param

    def naming(self, name: str) -> str:
        """The message with its parameter shown as `name` (a flag), where the message starts
        with the parameter, or names it right after a leading 'file: '."""
        text = str(self)
        if not self.param:
            return text
        for start in [0] + [i + 2 for i in range(len(text)) if text.startswith(": ", i)][:1]:
            rest = text[start + len(self.param):]
            if text.startswith(self.param, start) and rest[:1] in ("", ":", " "):
                return text[:start] + name + rest
        return text

    def lines_for(self, flags: dict) -> list:
        """The message's lines as a command line shows them: its parameter and every
        `name=VALUE` it mentions shown by their flags (`flags`: `{parameter: flag}`)."""
        lines = getattr(self, "lines", None)
        if not lines:
            lines = [self.naming(flags[self.param]) if self.param in flags else str(self)]
        return [flags_named(line, flags) for line in lines]


def flags_named(text: str, flags: dict) -> str:
    """`text` with each `name=VALUE` of a parameter in `flags` written as its flag:
    `force=True` -> `--force`, `inputs=random` -> `--inputs random`. A value that is a
    Python literal in braces, brackets or quotes (`custom_objects={'TLU': TLU}`) is an
    example for Python callers and stays as it is."""
    import re

    if not flags:
        return text
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))

    def flag(match):
        return flags[match.group(1)] + ("" if match.group(2) else " ")

    return re.sub(rf"(?<![\w.-])({names})=(?![{{\[('\"])(True\b)?", flag, text)


class InputErrors(InputError):
    """Every problem of one input at once: `lines`, one message each (the CLI prints one
    error line per message)."""

    def __init__(self, lines, param: str | None = None):
        self.lines = [str(line) for line in lines]
        super().__init__("\n".join(self.lines), param)


def with_prefix(exc: InputError, prefix: str) -> InputError:
    """`exc` with `prefix` (say "model.h5: ") before its message, before each line of an
    `InputErrors`."""
    if isinstance(exc, InputErrors):
        return InputErrors([f"{prefix}{line}" for line in exc.lines], exc.param)
    return InputError(f"{prefix}{exc}", exc.param)


class CheckFailed(EdgetruncError):
    """A check ran and failed (parity, accuracy target)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), else its type:
    what a one-line error shows of a library's own exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
