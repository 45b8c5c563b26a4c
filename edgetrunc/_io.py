"""Atomic file output and input checks shared by every module (no TensorFlow).

Outputs are written to a temporary file in the destination folder and renamed into place,
so a crash never leaves half a file; inputs are never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from edgetrunc.errors import InputError


def require_file(path, what="file", suffixes=None) -> Path:
    """Return `path` as a Path if it is a readable, non-empty file, else raise InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a {what}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(
            f"{path}: expected a {what} ({', '.join(suffixes)}), got '{path.suffix or 'no suffix'}'"
        )
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, expected a {what}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable")
    return path


def require_writable_dir(path) -> Path:
    """Create `path` (and parents) if needed; raise InputError if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create output folder ({exc.strerror})") from None
    if not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: output folder is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path, protect=()):
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    `protect` lists input paths that must never be overwritten.
    """
    path = Path(path)
    for other in protect:
        if Path(other).exists() and path.exists() and path.resolve() == Path(other).resolve():
            raise InputError(f"{path}: refusing to overwrite an input file")
    require_writable_dir(path.parent if str(path.parent) else Path("."))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, new_file_mode())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def new_file_mode() -> int:
    """The permissions a plain `open(path, "w")` would give: 0o666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path, data: bytes, protect=()):
    with atomic_path(path, protect) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str, protect=()):
    with atomic_path(path, protect) as tmp:
        tmp.write_text(text)


def write_json_atomic(path, obj, protect=()):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", protect)


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
