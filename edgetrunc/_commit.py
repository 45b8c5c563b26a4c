"""The commit protocol of an output folder: its lock, its journal and recovery (no TensorFlow).

A writer (`export.commit.OutputSet`) holds the folder's lock (`.edgetrunc.lock`, created
with no-follow and exclusive create), writes a journal (`.edgetrunc-commit.json`) naming a
random token, stages its files in the one folder `.edgetrunc-staging-<token>`, then turns
the journal into a commit record (every file's name and sha256) and renames the files into
place, the manifest last. A run killed at any moment leaves the journal: `recover` either
removes that run's staging folder (killed before its commit record: the old set stands) or
finishes the renames (roll forward: the new set). Readers call `settle` first, so they see
the old set whole or the new one whole, never a mix.

A journal is data this tool wrote, or nothing: it is read only as a regular file of bounded
size, opened without following links; every name in it must be a plain name of an artifact
inside the folder whose staged copy (or, once moved, whose file in place) has the recorded
hash, all checked before any rename. Anything else is refused in one line (InputError) and
left in place; nothing but the token's staging folder is ever deleted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from edgetrunc._io import open_regular
from edgetrunc.errors import InputError

LOCK = ".edgetrunc.lock"
JOURNAL = ".edgetrunc-commit.json"
STAGING_PREFIX = ".edgetrunc-staging-"
VERSION = 1
COMMIT_SUFFIXES = (".tflite", ".onnx", ".json")  # what a committed set holds
MAX_JOURNAL_BYTES = 1 << 16
MAX_FILES = 64
READER_WAIT_S = 30.0  # a reader waits this long for a writer that is committing right now
FAULT_VARIABLE = "EDGETRUNC_FAULT"  # tests kill the process at a named step, or at the Nth ("@N")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_LEFT = "left in place; remove it if no edgetrunc convert is writing there"
_faults_passed = 0


def fault_point(step: str) -> None:
    """Kill this process at `step` when the fault-injection variable names it, or when it
    reads `@N` and this is the Nth fault point reached (tests only)."""
    global _faults_passed
    wanted = os.environ.get(FAULT_VARIABLE)
    if not wanted:
        return
    _faults_passed += 1
    if wanted == step or wanted == f"@{_faults_passed}":
        os.kill(os.getpid(), signal.SIGKILL)


def check_name(name, where, hint: str = _LEFT) -> str:
    """`name` if it is a plain, visible file name of a committed set (`name.tflite`, ...)."""
    if not isinstance(name, str) or not name or name != os.path.basename(name) \
            or name.startswith(".") or "\\" in name or "\0" in name \
            or not name.lower().endswith(COMMIT_SUFFIXES):
        raise InputError(f"{where}: names {str(name)[:80]!r}, not a plain artifact name inside "
                         f"the folder (expected a name ending in {', '.join(COMMIT_SUFFIXES)})"
                         + (f"; {hint}" if hint else ""))
    return name


@dataclass
class Journal:
    """A parsed journal: `state` "staging" (nothing renamed yet) or "commit" (`files`, the
    `(name, sha256)` pairs to rename from the staging folder, the manifest last)."""

    token: str
    state: str
    files: tuple = ()

    def staging(self, folder: Path) -> Path:
        return folder / f"{STAGING_PREFIX}{self.token}"

    def to_bytes(self) -> bytes:
        record = {"edgetrunc_commit": VERSION, "token": self.token, "state": self.state}
        if self.state == "commit":
            record["files"] = [list(item) for item in self.files]
        return (json.dumps(record) + "\n").encode()


def _open_regular(path: Path, what: str, max_bytes: int | None = None):
    """`_io.open_regular` without following a link (a FIFO or device never blocks), its
    refusal saying that the file is left in place; a missing file or folder raises
    FileNotFoundError."""
    if not os.path.isdir(path.parent):
        raise FileNotFoundError(errno.ENOENT, "no such folder", str(path.parent))
    try:
        return open_regular(path, what, max_bytes, follow_links=False)
    except InputError as exc:
        raise InputError(f"{exc}; {_LEFT}") from None


def file_sha256(path: Path, what: str = "staged file") -> str:
    """The sha256 of the regular file `path` (never through a link)."""
    digest = hashlib.sha256()
    with _open_regular(path, what) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_journal(folder) -> Journal | None:
    """The folder's journal, None when it has none (or an empty one: a run killed while
    creating it had staged nothing yet); InputError for anything this tool did not write."""
    path = Path(folder) / JOURNAL
    try:
        with _open_regular(path, "commit record", MAX_JOURNAL_BYTES) as stream:
            data = stream.read(MAX_JOURNAL_BYTES + 1)
    except FileNotFoundError:
        return None
    if not data:
        return None
    if len(data) > MAX_JOURNAL_BYTES:
        raise InputError(f"{path}: over {MAX_JOURNAL_BYTES} bytes; not a commit record; {_LEFT}")
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(f"{path}: not a commit record (not JSON); {_LEFT}") from None
    return _parse(path, record)


def _parse(path: Path, record) -> Journal:
    keys = {"edgetrunc_commit", "token", "state"}
    bad = f"{path}: not a commit record this tool wrote"
    if not isinstance(record, dict) or not keys <= set(record) or \
            set(record) - keys - {"files"} or type(record["edgetrunc_commit"]) is not int \
            or record["edgetrunc_commit"] != VERSION:
        raise InputError(f"{bad} (expected the keys edgetrunc_commit, token, state); {_LEFT}")
    token, state = record["token"], record["state"]
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise InputError(f"{bad} (token {str(token)[:40]!r}: expected 32 hex digits); {_LEFT}")
    if state == "staging" and "files" not in record:
        return Journal(token, state)
    files = record.get("files")
    if state != "commit" or not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise InputError(f"{bad} (expected state 'staging', or 'commit' with 1 to {MAX_FILES} "
                         f"files); {_LEFT}")
    pairs = []
    for item in files:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], str) \
                or not _SHA256.fullmatch(item[1]):
            raise InputError(f"{bad} (expected [name, sha256] pairs); {_LEFT}")
        pairs.append((check_name(item[0], path), item[1]))
    if len({name for name, _ in pairs}) != len(pairs):
        raise InputError(f"{bad} (a name listed twice); {_LEFT}")
    return Journal(token, state, tuple(pairs))


def write_new_journal(folder: Path, journal: Journal) -> None:
    """Create the journal (exclusive create, no link followed) in one write."""
    fd = os.open(folder / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
    try:
        os.write(fd, journal.to_bytes())
    finally:
        os.close(fd)


def _remove_staging(folder: Path, journal: Journal) -> None:
    """Remove the journal's staging folder (only a real folder of that name, links inside it
    unlinked, never followed)."""
    staging = journal.staging(folder)
    try:
        mode = os.lstat(staging).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise InputError(f"{staging}: not a folder this tool staged (a link or a file); {_LEFT}")
    shutil.rmtree(staging)


def _pending_moves(folder: Path, journal: Journal, protect) -> list:
    """The names still to rename, after checking every one: staged with its recorded hash, or
    already in place with it. Refuses (InputError) before any rename."""
    staging = journal.staging(folder)
    if os.path.lexists(staging) and not stat.S_ISDIR(os.lstat(staging).st_mode):
        raise InputError(f"{staging}: not a folder this tool staged (a link or a file); {_LEFT}")
    where = folder / JOURNAL
    pending = []
    for name, digest in journal.files:
        final = folder / name
        if any(_same_file(final, Path(p)) for p in protect):
            raise InputError(f"{where}: would replace the input {final}; {_LEFT}")
        if os.path.lexists(staging / name):
            if file_sha256(staging / name) != digest:
                raise InputError(f"{where}: the staged {name} does not have its recorded "
                                 f"sha256; {_LEFT}")
            pending.append(name)
            continue
        try:
            in_place = file_sha256(final, "artifact") == digest
        except FileNotFoundError:
            in_place = False
        if not in_place:
            raise InputError(f"{where}: {name} is neither staged nor in place with its "
                             f"recorded sha256; {_LEFT}")
    return pending


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def recover(folder, protect=()) -> bool:
    """Finish what a killed run left in `folder`: without a commit record, remove the run's
    staging folder (the old set stands); with one, check every file against it and rename the
    rest into place (the new set). True when a commit was finished. Call it with the folder's
    lock held; refuses (InputError, nothing touched) a journal this tool did not write."""
    folder = Path(folder)
    journal = read_journal(folder)
    if journal is None:
        if os.path.lexists(folder / JOURNAL):  # empty: killed while creating it
            os.unlink(folder / JOURNAL)
        return False
    finished = False
    if journal.state == "commit":
        for name in _pending_moves(folder, journal, protect):
            os.replace(journal.staging(folder) / name, folder / name)
            fault_point("recover:after-move")
        finished = True
    _remove_staging(folder, journal)
    os.unlink(folder / JOURNAL)
    return finished


class FolderLock:
    """The folder's lock file, opened with O_NOFOLLOW | O_CREAT | O_EXCL (an existing one is
    reused only if it is a regular file: a link or FIFO is refused, never followed) and held
    with `flock`; removed on release while still held, so a waiter notices the new file."""

    def __init__(self, folder):
        self.path = Path(folder) / LOCK
        self._fd = None

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it."""
        for _ in range(3):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            if self._is_current(fd):
                self._fd = fd
                return True
            os.close(fd)  # its holder removed it as we opened it: take the new one
        return False

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS
        try:
            return os.open(self.path, flags, 0o644)
        except FileExistsError:
            pass
        try:
            with _open_regular(self.path, "lock file") as handle:  # flock needs no write mode
                return os.dup(handle.fileno())
        except FileNotFoundError:  # removed between the two opens
            return os.open(self.path, flags, 0o644)

    def _is_current(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.lstat(self.path).st_ino
        except OSError:
            return False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._is_current(fd):
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(fd)


def settle(folder, protect=()) -> None:
    """Make `folder` safe to read: where a killed run left a commit record, finish it under
    the folder's lock (waiting up to `READER_WAIT_S` for a writer committing right now); a
    journal this tool did not write, or a folder that cannot be recovered, is refused."""
    folder = Path(folder)
    journal = read_journal(folder)
    if journal is None or journal.state == "staging":  # the set in place is whole
        return
    lock = FolderLock(folder)
    deadline = time.monotonic() + READER_WAIT_S
    try:
        while not lock.acquire():
            if time.monotonic() > deadline:
                raise InputError(f"{folder}: an edgetrunc convert is committing this folder; "
                                 "try again when it has finished")
            time.sleep(0.05)
    except OSError:
        raise InputError(f"{folder}: an interrupted convert left a commit record ({JOURNAL}) "
                         "and the folder is not writable; run convert there again") from None
    try:
        recover(folder, protect)
    finally:
        lock.release()
