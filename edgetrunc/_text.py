"""Text and JSON rendering shared by every command and report (no TensorFlow).

The one owner of: plain-text tables (`table`), JSON sanitizing (`json_safe`) and writing
(`dump_json`: a path, or `-` for stdout), and making names safe to print on one line
(`printable`, `one_line`). Commands and reports build rows; this module lays them out.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np


def one_line(text) -> str:
    """`text` with line breaks shown as `\\n` / `\\r` (file names may hold them)."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def printable(text) -> str:
    """`text` with every non-printable character (ESC, line breaks, other controls, lone
    surrogates of undecodable file names) escaped, so it prints as one harmless line."""
    out = []
    for ch in str(text):
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif "\udc80" <= ch <= "\udcff":  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def table(headers, rows, align: str | None = None) -> str:
    """A plain-text table: a header, a rule of dashes, one line per row; columns two spaces
    apart. `align` has one letter per column, 'l' (default) or 'r'. Cells are shown with
    `printable`, so a name cannot move the cursor or recolour the terminal."""
    headers = [printable(h) for h in headers]
    rows = [[printable(c) for c in row] for row in rows]
    align = (align or "").ljust(len(headers), "l")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def json_safe(value, nan="string", digits: int | None = None):
    """`value` made strict-JSON: numpy scalars and arrays become Python numbers and lists,
    tuples become lists, keys become strings. Non-finite floats become the strings 'NaN',
    'inf', '-inf' (`nan="string"`) or null (`nan="null"`); `digits` rounds floats."""
    if isinstance(value, dict):
        return {str(k): json_safe(v, nan, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, nan, digits) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist(), nan, digits)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            if nan == "null":
                return None
            return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return round(value, digits) if digits is not None else value
    return value


def dumps_json(obj, nan="string", digits: int | None = None, indent: int = 2) -> str:
    """`obj` as strict JSON text (see `json_safe`), ending with a newline."""
    return json.dumps(json_safe(obj, nan, digits), indent=indent, allow_nan=False) + "\n"


def dump_json(obj, path="-", nan="string", digits: int | None = None, protect=()) -> None:
    """Write `obj` as JSON to `path` atomically, or to stdout when `path` is '-' or None."""
    text = dumps_json(obj, nan, digits)
    if path is None or str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from edgetrunc._io import write_text_atomic

    write_text_atomic(path, text, protect=protect)
