"""The commit protocol under attack and under kills (docs/SECURITY.md, "The commit protocol").

A commit record or lock that this tool did not write is refused in one line and left in
place; nothing outside the output folder is read, written, moved or deleted; a convert killed
at any moment leaves the old set or the new one to every reader, and the next run leaves no
hidden file. The kills run the protocol itself on fake artifacts in a forked child (no
TensorFlow), so twenty of them stay fast; tests/test_hostile.py kills real converts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetrunc import _commit
from edgetrunc._commit import (FAULT_VARIABLE, JOURNAL, LOCK, STAGING_PREFIX, FolderLock, recover,
                               settle)
from edgetrunc.errors import InputError
from edgetrunc.export.commit import OutputSet

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "0123456789abcdef0123456789abcdef"
OLD = {"m_fp32.tflite": 300_000, "m_fp32.onnx": 200_000}
NEW = {"m_fp32.tflite": 400_000, "m_fp16.tflite": 300_000, "m_fp32.onnx": 500_000}


def _rewrite_here(folder: Path, sizes: dict, seed: int, entered=None) -> None:
    """One convert into `folder`, in this process: fake artifacts of `sizes` bytes, seeded,
    and a manifest of their hashes."""
    rng = random.Random(seed)
    with OutputSet(folder, list(sizes) + ["manifest.json"], force=True) as outputs:
        if entered:
            entered()
        entries = []
        for name, size in sizes.items():
            content = rng.randbytes(size)
            outputs.stage(name, content)
            entries.append({"path": name, "sha256": hashlib.sha256(content).hexdigest()})
        outputs.commit("manifest.json", json.dumps({"artifacts": entries}))


def _killed_writer(folder: Path, sizes: dict, seed: int, fault=None, delay=None) -> int:
    """Run `_rewrite_here` in a forked child, killed at the fault point `fault` or `delay`
    seconds after it holds the folder; its exit code (-9 when killed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest teardown, no buffered output
        os.close(read_end)
        code = 1
        try:
            if fault:
                os.environ[FAULT_VARIABLE] = fault
            _commit._faults_passed = 0
            _rewrite_here(folder, sizes, seed, entered=lambda: os.write(write_end, b"e"))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    if delay is not None and os.read(read_end, 1):
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    os.close(read_end)
    return code


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _visible_set(folder: Path) -> set:
    """What a reader sees after `settle`: the manifest's names, every hash checked."""
    settle(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        assert _sha(folder / entry["path"]) == entry["sha256"], entry["path"]
    return {entry["path"] for entry in manifest["artifacts"]}


def _hidden(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def old_set(tmp_path):
    folder = tmp_path / "out"
    _rewrite_here(folder, OLD, seed=1)
    assert _visible_set(folder) == set(OLD) and _hidden(folder) == []
    return folder


def _journal(folder: Path, record) -> Path:
    path = folder / JOURNAL
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def _commit_record(names_and_hashes, token=TOKEN):
    return {"edgetrunc_commit": 1, "token": token, "state": "commit",
            "files": [list(item) for item in names_and_hashes]}


# kills at random moments ------------------------------------------------------------------

def test_twenty_random_kills_leave_the_old_set_or_the_new_one(old_set):
    rng = random.Random(20)
    points = iter(rng.sample(range(1, 12), 10))  # 10 of the 11 fault points the writer passes
    seen = set()
    for trial in range(20):
        if trial % 2:  # a fault point of the protocol, in a seeded order
            code = _killed_writer(old_set, NEW, seed=2, fault=f"@{next(points)}")
        else:  # a random moment once the writer holds the folder (it takes 40-80 ms here)
            code = _killed_writer(old_set, NEW, seed=2, delay=rng.uniform(0.0, 0.08))
        assert code in (-signal.SIGKILL, 0), (trial, code)
        visible = _visible_set(old_set)
        assert visible in (set(OLD), set(NEW)), (trial, visible)
        seen.add(frozenset(visible))
        _rewrite_here(old_set, OLD, seed=1)  # the next run: whole, and nothing hidden left
        assert _visible_set(old_set) == set(OLD) and _hidden(old_set) == [], trial
    assert len(seen) == 2, "the kills should land both before and after the commit record"


@pytest.mark.parametrize("step", ["after-journal", "after-stage", "after-staging", "after-record",
                                  "after-artifact", "before-manifest", "after-manifest",
                                  "after-cleanup"])
def test_every_fault_point_leaves_a_whole_set_and_the_next_run_no_leftover(old_set, step):
    assert _killed_writer(old_set, NEW, seed=2, fault=f"convert:{step}") == -signal.SIGKILL
    before_record = step in ("after-journal", "after-stage", "after-staging")
    assert _visible_set(old_set) == set(OLD if before_record else NEW)
    _rewrite_here(old_set, NEW, seed=3)
    assert _visible_set(old_set) == set(NEW) and _hidden(old_set) == []


def test_a_kill_during_recovery_is_recovered_again(old_set):
    assert _killed_writer(old_set, NEW, seed=2, fault="convert:after-record") == -9
    script = "import sys; from edgetrunc._commit import settle; settle(sys.argv[1])"
    killed = subprocess.run([sys.executable, "-c", script, str(old_set)], timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT),
                                     EDGETRUNC_FAULT="recover:after-move"))
    assert killed.returncode == -9
    assert _visible_set(old_set) == set(NEW)


# planted records are refused and left in place ---------------------------------------------

def _planted_staging(folder: Path, name: str, content: bytes) -> str:
    staging = folder / f"{STAGING_PREFIX}{TOKEN}"
    staging.mkdir(exist_ok=True)
    (staging / name).write_bytes(content)
    return hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize("name", ["../evil.tflite", "/tmp/evil.tflite", "sub/evil.tflite",
                                  ".edgetrunc.lock", "notes.pth", "model.keras", "", "..", 7])
def test_a_record_naming_anything_but_a_plain_artifact_is_refused(old_set, name):
    digest = hashlib.sha256(b"x").hexdigest()
    journal = _journal(old_set, _commit_record([(name, digest)]))
    before = sorted(p.name for p in old_set.parent.rglob("*"))
    with pytest.raises(InputError, match="not a plain artifact name") as error:
        recover(old_set)
    assert "\n" not in str(error.value)
    assert journal.exists() and sorted(p.name for p in old_set.parent.rglob("*")) == before


def test_a_record_moving_a_file_out_of_the_folder_runs_nothing(tmp_path):
    """The planted record of the report: a `.pth` moved into site-packages runs at start-up."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.pth").write_text("import os; os.system('touch PWNED')\n")
    target = tmp_path / "site-packages" / "zz_evil.pth"
    target.parent.mkdir()
    _journal(folder, {"moves": [["notes.pth", str(target)]]})
    with pytest.raises(InputError, match="not a commit record this tool wrote"):
        recover(folder)
    assert not target.exists() and (folder / "notes.pth").exists() and (folder / JOURNAL).exists()


def test_convert_into_a_model_folder_with_a_planted_record_refuses_in_one_line(cli, tmp_path):
    folder = tmp_path / "shipped"
    folder.mkdir()
    model = folder / "m.keras"
    model.write_bytes((ROOT / "models" / "tlunet.keras").read_bytes())
    (folder / "notes.pth").write_text("import os\n")
    digest = _sha(folder / "notes.pth")
    planted = _journal(folder, _commit_record([("notes.pth", digest)]))
    code, _, err = cli("convert", model, "--tflite", "fp32", "--onnx", "")
    assert code == 2 and err.count("\n") == 1 and "not a plain artifact name" in err, err
    assert sorted(p.name for p in folder.iterdir()) == [JOURNAL, "m.keras", "notes.pth"]
    assert planted.exists()


def test_a_record_whose_hashes_do_not_match_moves_nothing(old_set):
    digest = _planted_staging(old_set, "m_fp32.tflite", b"forged")
    other = hashlib.sha256(b"other").hexdigest()
    _journal(old_set, _commit_record([("m_fp32.tflite", digest), ("manifest.json", other)]))
    before = _sha(old_set / "m_fp32.tflite")
    with pytest.raises(InputError, match="manifest.json is neither staged nor in place"):
        recover(old_set)
    assert _sha(old_set / "m_fp32.tflite") == before  # checked before any move
    assert (old_set / f"{STAGING_PREFIX}{TOKEN}" / "m_fp32.tflite").exists()


@pytest.mark.parametrize("text", [
    "{not json", "[" * 30_000 + "]" * 30_000, '["a list"]', '{"moves": []}',
    json.dumps({"edgetrunc_commit": 1, "token": "../../x", "state": "staging"}),
    json.dumps({"edgetrunc_commit": 1, "token": TOKEN, "state": "commit", "files": "abc"}),
    json.dumps({"edgetrunc_commit": 1, "token": TOKEN, "state": "commit", "files": [["a.onnx", 1]]}),
    json.dumps({"edgetrunc_commit": 1, "token": TOKEN, "state": "commit", "files": [[["x"], "0"]]}),
    json.dumps({"edgetrunc_commit": True, "token": TOKEN, "state": "staging"}),
    "\xff\xfe" + " " * 10, " " * (1 << 17),
])
def test_a_malformed_record_is_one_line_and_left_in_place(old_set, text):
    journal = _journal(old_set, text)
    for call in (recover, settle):
        with pytest.raises(InputError) as error:
            call(old_set)
        assert "\n" not in str(error.value) and JOURNAL in str(error.value)
    assert journal.read_text() == text


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder", "device"])
def test_a_record_or_lock_that_is_no_regular_file_is_refused_never_followed(old_set, tmp_path, kind):
    outside = tmp_path / "outside.json"
    for name in (JOURNAL, LOCK):
        path = old_set / name
        if kind == "symlink":
            path.symlink_to(outside)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            path.mkdir()
        else:
            path.symlink_to("/dev/zero")
        call = recover if name == JOURNAL else (lambda folder: FolderLock(folder).acquire())
        with pytest.raises(InputError, match="symbolic link|not a regular file"):
            call(old_set)  # a FIFO never blocks, /dev/zero is never read
        assert not outside.exists() and os.path.lexists(path)
        os.rmdir(path) if kind == "folder" else os.unlink(path)


def test_a_users_staging_folder_is_never_deleted(old_set):
    mine = old_set / f"{STAGING_PREFIX}mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("my notes")
    lookalike = old_set / f"{STAGING_PREFIX}{'f' * 32}"
    lookalike.mkdir()
    _rewrite_here(old_set, NEW, seed=2)
    assert (mine / "keep.txt").read_text() == "my notes" and lookalike.is_dir()
    assert _hidden(old_set) == sorted([mine.name, lookalike.name])


def test_a_staging_token_folder_that_is_a_link_is_refused(old_set, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("keep")
    (old_set / f"{STAGING_PREFIX}{TOKEN}").symlink_to(victim)
    _journal(old_set, {"edgetrunc_commit": 1, "token": TOKEN, "state": "staging"})
    with pytest.raises(InputError, match="not a folder this tool staged"):
        recover(old_set)
    assert (victim / "data.txt").read_text() == "keep"


def test_readers_settle_a_killed_commit_or_refuse_a_forged_one(old_set):
    from edgetrunc.runtime import open_runner

    assert _killed_writer(old_set, NEW, seed=2, fault="convert:before-manifest") == -9
    with pytest.raises(InputError):  # fake bytes: refused as a model, after the set settled
        open_runner(old_set / "m_fp16.tflite")
    assert not (old_set / JOURNAL).exists() and _visible_set(old_set) == set(NEW)
    _journal(old_set, "{forged")
    with pytest.raises(InputError, match="not a commit record"):
        open_runner(old_set / "m_fp16.tflite")


def test_infer_finishes_a_killed_commit_before_it_reads_and_refuses_a_forged_one(cli, tmp_path):
    import numpy as np
    from PIL import Image

    content = (ROOT / "models" / "tlunet_fp32.tflite").read_bytes()
    folder = tmp_path / "out"
    pid = os.fork()
    if pid == 0:  # a convert killed after its commit record, before any rename
        try:
            os.environ[FAULT_VARIABLE] = "convert:after-record"
            with OutputSet(folder, ["m.tflite", "manifest.json"]) as outputs:
                outputs.stage("m.tflite", content)
                outputs.commit("manifest.json", json.dumps({"artifacts": []}))
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL
    assert not (folder / "m.tflite").exists() and (folder / JOURNAL).exists()
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(image)
    code, out, err = cli("infer", folder / "m.tflite", image)
    assert code == 0, err
    assert (folder / "m.tflite").read_bytes() == content and _hidden(folder) == []
    _journal(folder, {"edgetrunc_commit": 1, "token": TOKEN, "state": "commit",
                      "files": [["m.tflite", "0" * 64]]})
    code, out, err = cli("infer", folder / "m.tflite", image)
    assert code == 2 and err.count("\n") == 1 and JOURNAL in err and (folder / JOURNAL).exists()


def test_an_empty_journal_from_a_kill_at_its_creation_is_dropped(old_set):
    (old_set / JOURNAL).write_bytes(b"")
    assert recover(old_set) is False
    assert _hidden(old_set) == [] and _visible_set(old_set) == set(OLD)


def test_output_set_names_must_be_plain(tmp_path):
    with pytest.raises(InputError, match="not a plain artifact name"):
        OutputSet(tmp_path, ["../x.tflite", "manifest.json"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_real_convert_killed_before_its_manifest_is_finished_by_the_next_one_without_force(
        tiny_keras, tmp_path, cli):
    """The report's case: "exists; use --force" ran before recovery, so the mix stayed. The
    killed convert is a process of its own; the ones before and after it run in-process."""
    out = tmp_path / "out"
    args = ["convert", str(tiny_keras), "--out", str(out), "--onnx", ""]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    first = cli(*args, "--tflite", "fp32")
    assert first[0] == 0, first
    killed = subprocess.run([sys.executable, "-m", "edgetrunc", "-q", *args, "--tflite", "fp32,fp16",
                             "--force"], capture_output=True,
                            env=dict(env, EDGETRUNC_FAULT="convert:before-manifest"), text=True)
    assert killed.returncode == -signal.SIGKILL and (out / JOURNAL).exists()
    code, _, err = cli(*args, "--tflite", "fp32")
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "exists; use --force" in err
    assert _hidden(out) == [] and _visible_set(out) == {"tiny_fp32.tflite", "tiny_fp16.tflite"}
