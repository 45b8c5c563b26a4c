"""Atomic file output and input checks shared by every module (no TensorFlow).

Outputs are written to a temporary file in the destination folder and renamed into place,
so a crash never leaves half a file; inputs are never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
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
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a FIFO, device or socket), expected a {what}")
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path, protect=()) -> Path:
    """The real file an output at `path` will be written to, after refusing what must not be
    replaced: an input named in `protect` (or, for a protected folder, a file in it), a
    folder, or a path whose parent is not a folder. Symbolic links are followed, so the link
    stays and its target gets the new content."""
    path = Path(path)
    target = resolve_path(path)
    for other in protect:
        other = Path(other)
        if _same_file(target, other) or target == Path(os.path.realpath(other)):
            raise InputError(f"{path}: refusing to overwrite an input file")
        if other.is_dir() and target.exists() and Path(os.path.realpath(other)) in target.parents:
            raise InputError(f"{path}: refusing to overwrite a file of the input folder {other}")
    if target.is_dir():
        raise InputError(f"{path}: is a folder, expected a file name to write")
    return target


# The outputs of one run are checked together, before any work starts and before anything is
# created: against each other and against every input of the same run.

def resolve_path(path, label=None, what="output") -> Path:
    """`path` with every link resolved; a symbolic link loop is an InputError naming it."""
    shown = f"{label} {path}" if label else f"{path}"
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{shown}: a symbolic link loop; expected an {what} path",
                             param=label) from None
    resolved = Path(os.path.realpath(path))
    if os.path.islink(resolved):  # a link into a loop that realpath leaves as it is
        raise InputError(f"{shown}: a symbolic link loop; expected an {what} path", param=label)
    return resolved


def _same_or_inside(a: Path, b: Path, b_is_folder: bool) -> str | None:
    if a == b or _same_file(a, b):
        return "same"
    if b_is_folder and b in a.parents:
        return "inside"
    return None


def check_run_paths(outputs: dict, inputs: dict | None = None, folders=()) -> dict:
    """Refuse, before any work, outputs of one run that collide; returns them resolved.

    `outputs` maps each output's parameter name to its path (None and '-' are skipped),
    `inputs` each input's name to a path or a list of paths (files or folders; None and
    values that are no path are skipped), `folders` names the outputs that are folders
    (caches). Refused, as an InputError naming the output's parameter: a symbolic link loop,
    two outputs on one file (resolved paths, or inode and device where the files exist), an
    output inside an output folder, an output that is an input (or an existing file of an
    input folder), and an output folder that holds an input or lies inside an input folder."""
    resolved = {k: resolve_path(v, k) for k, v in outputs.items() if v is not None and str(v) != "-"}
    sources = [(k, p, Path(os.path.realpath(p))) for k, paths in (inputs or {}).items()
               for p in (paths if isinstance(paths, (list, tuple)) else [paths])
               if isinstance(p, (str, os.PathLike)) and str(p).strip()]
    for name, target in resolved.items():
        shown = f"{name} {outputs[name]}"
        is_folder = name in folders
        for other, other_target in resolved.items():
            relation = None if other == name else _same_or_inside(target, other_target, other in folders)
            if relation == "same" and list(resolved).index(other) < list(resolved).index(name):
                raise InputError(f"{shown}: the same path as {other} {outputs[other]}; give each "
                                 "output its own path", param=name)
            if relation == "inside":
                raise InputError(f"{shown}: inside the {other} folder {outputs[other]}; write it "
                                 "elsewhere", param=name)
        for other, given, source in sources:
            relation = _same_or_inside(target, source, source.is_dir()) or (
                is_folder and _same_or_inside(source, target, True))
            if relation == "same":
                raise InputError(f"{shown}: refusing to overwrite an input file (the {other} "
                                 f"{given})", param=name)
            if relation and is_folder:
                raise InputError(f"{shown}: overlaps the input {other} {given}; refusing to "
                                 "write there (inputs are never overwritten)", param=name)
            if relation == "inside" and target.exists():
                raise InputError(f"{shown}: refusing to overwrite a file of the input folder "
                                 f"{given}", param=name)
        if not is_folder and target.is_dir():
            raise InputError(f"{shown}: is a folder, expected a file name to write", param=name)
        if is_folder and target.exists() and not target.is_dir():
            raise InputError(f"{shown}: exists and is not a folder", param=name)
    return resolved


def is_stream(target: Path) -> bool:
    """True for an existing target that is not a regular file (a FIFO, a terminal, a
    character device such as /dev/stdout or /dev/null): written through, never replaced."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode)


@contextlib.contextmanager
def atomic_path(path, protect=()):
    """Yield a temporary path; when the block succeeds, rename it onto `path`.

    `protect` lists inputs (files or folders) that must never be overwritten. A `path` that
    is a FIFO or a device is written through instead of replaced; a symbolic link keeps
    pointing where it did. A failed write removes the temporary file and raises InputError
    naming `path` (disk full, read-only file system, permissions).
    """
    path = Path(path)
    target = check_output(path, protect)
    stream = is_stream(target)
    folder = Path(tempfile.gettempdir()) if stream else target.parent
    if not stream:
        require_writable_dir(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, new_file_mode())
        yield tmp
        if stream:
            with open(tmp, "rb") as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
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
    """`text` as UTF-8; a name that is not UTF-8 (a file name's undecodable bytes) is
    written escaped (`\\udcff`), never a traceback."""
    with atomic_path(path, protect) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")


def write_json_atomic(path, obj, protect=()):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", protect)


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Files a user or another run could plant (cache entries, cover images, .npz inputs) are
# opened only as regular files of a known size: never a FIFO (it would block), a device
# (/dev/zero never ends) or a socket, and, where the caller says so, never through a link.

def open_regular(path, what: str = "file", max_bytes: int | None = None,
                 follow_links: bool = True, folder=None):
    """A binary file object on `path` once it is a regular file of at most `max_bytes`.

    The file is opened without blocking and checked on the open descriptor, so a FIFO,
    device or socket is refused without reading it and nothing can swap the file between
    the check and the read. `follow_links=False` refuses a symbolic link; `folder` requires
    the file to sit in that folder itself (a parent linked elsewhere is refused). A missing
    file raises `FileNotFoundError`; everything else refused is an `InputError` naming
    `path` and the `what` expected."""
    path = Path(path)
    if folder is not None and os.path.realpath(path.parent) != os.path.realpath(folder):
        raise InputError(f"{path}: not inside {folder} (a linked folder); expected a {what}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            kind = "a symbolic link loop" if follow_links else "a symbolic link"
            raise InputError(f"{path}: {kind}; expected a regular {what}") from None
        raise InputError(f"{path}: cannot open the {what} ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: not a regular file (a folder, FIFO, device or socket); "
                             f"expected a {what}")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputError(f"{path}: {info.st_size} bytes, over the {max_bytes} bytes a "
                             f"{what} can have")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, what: str = "file", max_bytes: int | None = None,
                 follow_links: bool = True, folder=None) -> bytes:
    """The bytes of `path`, opened as `open_regular` does; a file that grows past
    `max_bytes` while it is read is refused too."""
    with open_regular(path, what, max_bytes, follow_links, folder) as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError(f"{path}: over the {max_bytes} bytes a {what} can have")
    return data
