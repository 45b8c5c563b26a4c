"""`OutputSet`: a set of outputs in one folder, committed whole or not at all.

`convert` writes several artifacts and a `manifest.json` that describes them. An `OutputSet`
holds a lock on the folder (a second concurrent writer is refused; the lock file is removed
when the set is done), stages every file in a
hidden folder inside it, and commits by writing a commit record (a journal of the renames),
renaming every staged file into place with the manifest last, and removing the record. A run
that fails removes what it staged; a run killed while committing leaves the record, and the
next `OutputSet` on that folder finishes the commit before doing anything else (roll
forward), so readers of the manifest see the old set or the new one, never a mix. A refused
run creates nothing: the folder is made only when staging starts, and removed again if the
run ends without committing and left nothing else there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
from pathlib import Path

from edgetrunc._io import new_file_mode
from edgetrunc.errors import InputError

LOCK = ".edgetrunc.lock"
JOURNAL = ".edgetrunc-commit.json"
STAGING_PREFIX = ".edgetrunc-staging-"
FAULT_VARIABLE = "EDGETRUNC_FAULT"  # tests kill the process at a named step


def fault_point(step: str) -> None:
    """Kill this process at `step` when the fault-injection variable names it (tests only)."""
    if os.environ.get(FAULT_VARIABLE) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def recover(out_dir) -> bool:
    """Finish a commit that a killed run left in `out_dir` and drop stale staging folders;
    True when a commit was finished. Call it with the folder's lock held."""
    out_dir = Path(out_dir)
    journal = out_dir / JOURNAL
    finished = False
    if journal.exists():
        try:
            moves = json.loads(journal.read_text())["moves"]
        except (OSError, ValueError, KeyError, TypeError):
            moves = []
        for staged, final in moves:
            staged_path = out_dir / staged
            if staged_path.exists():
                os.replace(staged_path, out_dir / final)
        journal.unlink()
        finished = bool(moves)
    for stale in out_dir.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return finished


class OutputSet:
    """Stage files for `out_dir` and commit them together (see the module docstring).

    Args:
        out_dir: the destination folder (made when the set is entered, if missing).
        names: the file names the set will hold (checked against existing files).
        force: replace existing files of the same names.
        protect: inputs that must never be replaced.
    """

    def __init__(self, out_dir, names, force=False, protect=()):
        self.out_dir = Path(out_dir)
        self.names = list(names)
        self.force = force
        self.protect = [Path(p) for p in protect]
        self._created = []
        self._lock = None
        self._staging = None
        self._staging_owner = False
        self.staged: dict = {}

    def check_targets(self) -> None:
        """Refuse a name that is an input or a folder, or that exists without `force`."""
        existing = []
        for name in self.names:
            target = self.out_dir / name
            if any(target.exists() and p.exists() and os.path.samefile(target, p) for p in self.protect):
                raise InputError(f"{target}: refusing to overwrite the source model")
            if target.is_dir():
                raise InputError(f"{target}: is a folder; expected to write a file there")
            if target.exists():
                existing.append(str(target))
        if existing and not self.force:
            raise InputError(f"{existing[0]}: exists; use --force to replace the outputs "
                             f"({len(existing)} file(s) exist)")

    def __enter__(self):
        self._make_folder()
        try:
            self._lock = open(self.out_dir / LOCK, "a")
            if not self._locked():
                raise InputError(f"{self.out_dir}: another edgetrunc convert is writing this "
                                 "folder; wait for it to finish")
            self._staging_owner = True
            recover(self.out_dir)
            self.check_targets()
            self._staging = self.out_dir / f"{STAGING_PREFIX}{os.getpid()}"
            self._staging.mkdir()
        except BaseException:
            self._release(committed=False)
            raise
        return self

    def _locked(self) -> bool:
        """Take the folder's lock; False when another process holds it (or removed the lock
        file it held, between our open and our lock)."""
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return os.fstat(self._lock.fileno()).st_ino == os.stat(self.out_dir / LOCK).st_ino
        except OSError:
            return False

    def _make_folder(self) -> None:
        missing = []
        probe = self.out_dir
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.out_dir}: cannot create output folder ({exc.strerror})") from None
        self._created = missing

    def stage(self, name: str, content: bytes) -> Path:
        """Write `content` as the staged file `name`; returns its path (to read back)."""
        path = self._staging / name
        try:
            with open(path, "wb") as stream:
                stream.write(content)
        except OSError as exc:
            raise InputError(f"{self.out_dir / name}: cannot write ({exc.strerror or exc})") from None
        os.chmod(path, new_file_mode())
        self.staged[name] = path
        return path

    def commit(self, manifest_name: str, manifest_text: str) -> None:
        """Stage the manifest, write the commit record, move everything in, manifest last."""
        self.stage(manifest_name, manifest_text.encode())
        fault_point("convert:after-staging")
        order = [n for n in self.staged if n != manifest_name] + [manifest_name]
        moves = [[os.path.relpath(self.staged[n], self.out_dir), n] for n in order]
        journal = self.out_dir / JOURNAL
        tmp = self._staging / JOURNAL
        tmp.write_text(json.dumps({"moves": moves}))
        os.replace(tmp, journal)
        for index, (staged, final) in enumerate(moves):
            os.replace(self.out_dir / staged, self.out_dir / final)
            if index == 0:
                fault_point("convert:after-artifact")
            if index == len(moves) - 2:
                fault_point("convert:before-manifest")
        fault_point("convert:after-manifest")
        journal.unlink()
        self._release(committed=True)

    def __exit__(self, kind, value, traceback):
        if self._lock is not None:
            self._release(committed=False)
        return False

    def _release(self, committed: bool) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        lock, self._lock = self._lock, None
        if lock is None:
            return
        if self._holds_lock(lock):
            with contextlib.suppress(OSError):
                (self.out_dir / LOCK).unlink()  # removed while held: a waiter sees a new file
            if not committed:
                self._remove_if_untouched()
        lock.close()

    def _holds_lock(self, lock) -> bool:
        try:
            return os.fstat(lock.fileno()).st_ino == os.stat(self.out_dir / LOCK).st_ino and \
                self._staging_owner
        except OSError:
            return False

    def _remove_if_untouched(self) -> None:
        """A run that committed nothing leaves no folder it made and no lock file there."""
        if not self._created:
            return
        try:
            for folder in self._created:
                folder.rmdir()
        except OSError:
            pass
