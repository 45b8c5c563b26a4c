"""`OutputSet`: a set of outputs in one folder, committed whole or not at all.

`convert` writes several artifacts and a `manifest.json` that describes them. An `OutputSet`
follows the folder's commit protocol (`edgetrunc._commit`, docs/SECURITY.md): under the
folder's lock it first finishes or cleans what a killed run left, checks the targets, writes
a journal naming a random token and stages every file in the one folder
`.edgetrunc-staging-<token>`; `commit` turns the journal into a commit record (each file's
sha256), renames every staged file into place, the manifest last, and removes the record.
A run that fails removes what it staged and its journal; a run killed at any moment leaves
the journal, and the next writer or reader of the folder rolls it forward (or drops the
staging folder when no commit record was written), so readers see the old set or the new
one, never a mix. A refused run creates nothing: the folder is made only when staging
starts, and removed again if the run ends without committing and left nothing else there.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

from edgetrunc._commit import (JOURNAL, LOCK, STAGING_PREFIX, FolderLock, Journal, check_name,
                               fault_point, recover, settle, write_new_journal)
from edgetrunc._io import new_file_mode
from edgetrunc.errors import InputError

__all__ = ["OutputSet", "JOURNAL", "LOCK", "STAGING_PREFIX", "fault_point", "recover"]


class OutputSet:
    """Stage files for `out_dir` and commit them together (see the module docstring).

    Args:
        out_dir: the destination folder (made when the set is entered, if missing).
        names: the plain file names the set will hold (checked against existing files).
        force: replace existing files of the same names.
        protect: inputs that must never be replaced.
    """

    def __init__(self, out_dir, names, force=False, protect=()):
        self.out_dir = Path(out_dir)
        self.names = [check_name(name, self.out_dir, hint="") for name in names]
        self.force = force
        self.protect = [Path(p) for p in protect]
        self._created = []
        self._lock = FolderLock(self.out_dir)
        self._journal = None
        self._committing = False
        self.staged: dict = {}
        self._hashes: dict = {}

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
            raise InputError(f"{existing[0]}: exists; use force=True to replace the outputs "
                             f"({len(existing)} file(s) exist)")

    def preflight(self) -> None:
        """Before the slow work: finish a commit a killed run left (so the targets are the
        ones a reader sees), then `check_targets`."""
        if self.out_dir.is_dir():
            settle(self.out_dir, self.protect)
        self.check_targets()

    def __enter__(self):
        self._make_folder()
        try:
            if not self._lock.acquire():
                raise InputError(f"{self.out_dir}: another edgetrunc convert is writing this "
                                 "folder; wait for it to finish")
            recover(self.out_dir, self.protect)
            self.check_targets()
            self._journal = Journal(secrets.token_hex(16), "staging")
            write_new_journal(self.out_dir, self._journal)
            fault_point("convert:after-journal")
            self._journal.staging(self.out_dir).mkdir(mode=0o700)
        except BaseException:
            self._release(committed=False)
            raise
        return self

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

    @property
    def staging(self) -> Path:
        return self._journal.staging(self.out_dir)

    def stage(self, name: str, content: bytes) -> Path:
        """Write `content` as the staged file `name`; returns its path (to read back)."""
        if name not in self.names:
            raise InputError(f"{self.out_dir / name}: not one of the names this set was made for")
        path = self.staging / name
        try:
            with open(path, "wb") as stream:
                stream.write(content)
        except OSError as exc:
            raise InputError(f"{self.out_dir / name}: cannot write ({exc.strerror or exc})") from None
        os.chmod(path, new_file_mode())
        self.staged[name] = path
        self._hashes[name] = hashlib.sha256(content).hexdigest()
        fault_point("convert:after-stage")
        return path

    def commit(self, manifest_name: str, manifest_text: str) -> None:
        """Stage the manifest, write the commit record, move everything in, manifest last."""
        self.stage(manifest_name, manifest_text.encode())
        fault_point("convert:after-staging")
        order = [n for n in self.staged if n != manifest_name] + [manifest_name]
        record = Journal(self._journal.token, "commit", tuple((n, self._hashes[n]) for n in order))
        tmp = self.staging / JOURNAL
        tmp.write_bytes(record.to_bytes())
        os.replace(tmp, self.out_dir / JOURNAL)
        self._committing = True  # from here on, a failure leaves the record to roll forward
        fault_point("convert:after-record")
        for index, name in enumerate(order):
            os.replace(self.staged[name], self.out_dir / name)
            if index == 0:
                fault_point("convert:after-artifact")
            if index == len(order) - 2:
                fault_point("convert:before-manifest")
        fault_point("convert:after-manifest")
        self.staging.rmdir()
        fault_point("convert:after-cleanup")
        os.unlink(self.out_dir / JOURNAL)
        self._committing = False
        self._release(committed=True)

    def __exit__(self, kind, value, traceback):
        if self._lock.held:
            self._release(committed=False)
        return False

    def _release(self, committed: bool) -> None:
        if self._journal is not None and not self._committing and self._lock.held:
            shutil.rmtree(self.staging, ignore_errors=True)
            if not committed:
                try:
                    os.unlink(self.out_dir / JOURNAL)
                except OSError:
                    pass
            self._journal = None
        if not self._lock.held:
            return
        self._lock.release()
        if not committed:
            self._remove_if_untouched()

    def _remove_if_untouched(self) -> None:
        """A run that committed nothing leaves no folder it made and no lock file there."""
        if not self._created:
            return
        try:
            for folder in self._created:
                folder.rmdir()
        except OSError:
            pass
