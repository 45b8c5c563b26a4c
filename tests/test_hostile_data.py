"""Hostile data files (docs/SECURITY.md, "Bounds"): planted special files, forged stego-cache
entries, decompression bombs, oversized .npz members, non-UTF-8 names, hostile TF_CONFIG.

Every case generates its own hostile file. A case that could hang runs in a subprocess with
a timeout; a case with a memory bound measures the subprocess's peak RSS (`ru_maxrss`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgetrunc._io import open_regular, read_regular, write_text_atomic
from edgetrunc.data.stego_cache import StegoCache, StegoKey, StegoSettings, usable_cores
from edgetrunc.data.stego_entry import MAGIC, encode_entry, min_change_rate
from edgetrunc.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def run_python(code: str, cwd, timeout: float = 60) -> tuple[subprocess.CompletedProcess, int]:
    """Run `code` in a fresh interpreter; `(result, peak RSS in bytes)`. The code's last
    stdout line is left for the caller; the peak RSS is printed after it."""
    wrapped = code + textwrap.dedent("""
        import resource
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", wrapped], cwd=cwd, env=env, text=True,
                            capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result, int(result.stdout.split()[-1])


# regular files only ------------------------------------------------------------------------

def test_open_regular_refuses_special_files_links_and_oversize(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        open_regular(fifo, "entry")  # refused without blocking on the FIFO
    with pytest.raises(InputError, match="not a regular file"):
        read_regular("/dev/zero", "entry", 100)
    real = tmp_path / "real"
    real.write_bytes(b"x" * 10)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InputError, match="a symbolic link"):
        read_regular(link, "entry", follow_links=False)
    with pytest.raises(InputError, match="over the 9 bytes"):
        read_regular(real, "entry", 9)
    assert read_regular(link, "entry", 10) == b"x" * 10
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")


# the stego cache -------------------------------------------------------------------------

def _tile(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)


def _forged(key, cover, stego=None, reason=None, header=None):
    """An entry as a forger who knows the format writes it (the binding digest included)."""
    data = encode_entry(key, cover, stego, reason)
    if header is None:
        return data
    from edgetrunc.data import stego_entry

    content = len(header).to_bytes(4, "little") + header + (b"" if stego is None else stego.tobytes())
    return MAGIC + content + stego_entry._binding(key, stego_entry.pixel_digest(cover), content)


KEY = StegoKey("0" * 64, (0, 0), 0.4, "hill", 0, 0)


def _plant(cache: StegoCache, data: bytes) -> Path:
    path = cache.path(KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", ["deep", "list", "identical", "too_few", "too_many", "plus_two"])
def test_forged_cache_entries_are_refused(tmp_path, capsys, case):
    cover = _tile()
    stego = cover.copy()
    changes = {"too_few": 1, "too_many": 200, "plus_two": 30}.get(case, 0)
    stego.reshape(-1)[:changes] ^= 1
    if case == "plus_two":
        stego.reshape(-1)[0] = cover.reshape(-1)[0] ^ 2
    header = {"deep": b"[" * 30_000 + b"]" * 30_000, "list": b"[1, 2]"}.get(case)
    cache = StegoCache(tmp_path)
    _plant(cache, _forged(KEY, cover, stego, header=header))
    assert cache.load(KEY, cover) == (None, "rebuild")
    reason = {"deep": "unreadable header", "list": "not a JSON object",
              "identical": "identical to its cover", "too_few": "implausible",
              "too_many": "implausible", "plus_two": "larger than 1"}[case]
    assert reason in capsys.readouterr().err


def test_a_plausible_entry_is_used():
    cover = _tile()
    stego = cover.copy()
    flat = stego.reshape(-1)
    flat[: int(np.ceil(min_change_rate(0.4) * flat.size))] ^= 1
    cache = StegoCache(Path("/nonexistent"))
    from edgetrunc.data.stego_entry import decode_entry

    assert np.array_equal(decode_entry(_forged(KEY, cover, stego), KEY, cover)[0], stego)
    assert cache.path(KEY).name.startswith(KEY.digest())


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "outside"])
def test_a_cache_entry_that_is_a_special_file_or_a_link_is_rebuilt(tmp_path, capsys, target):
    cache = StegoCache(tmp_path / "cache")
    path = cache.path(KEY)
    path.parent.mkdir(parents=True)
    if target == "fifo":
        os.mkfifo(path)
    else:
        outside = tmp_path / "outside.stego"
        outside.write_bytes(_forged(KEY, _tile(), _tile()))
        path.symlink_to("/dev/zero" if target == "/dev/zero" else outside)
    assert cache.load(KEY, _tile()) == (None, "rebuild")
    assert "not usable" in capsys.readouterr().err
    cache.store(KEY, _tile(), None, "cannot carry")  # replaces the planted entry itself
    assert path.is_file() and not path.is_symlink()
    assert cache.load(KEY, _tile()) == (None, "cannot carry")


def test_a_cache_shard_linked_outside_or_a_file_is_refused_in_one_line(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = StegoCache(tmp_path / "cache")
    shard = cache.path(KEY).parent
    shard.parent.mkdir()
    shard.symlink_to(outside)
    with pytest.raises(InputError, match="is a symbolic link; expected a folder"):
        cache.store(KEY, _tile(), None, "cannot carry")
    assert list(outside.iterdir()) == []
    shard.unlink()
    shard.write_text("not a folder")
    with pytest.raises(InputError, match=f"stego cache {cache.root}: .* is not a folder"):
        cache.store(KEY, _tile(), None, "cannot carry")


def test_an_entry_name_taken_by_a_folder_names_the_entry(tmp_path):
    cache = StegoCache(tmp_path)
    cache.path(KEY).mkdir(parents=True)
    with pytest.raises(InputError) as error:
        cache.store(KEY, _tile(), None, "cannot carry")
    assert KEY.digest() in str(error.value) and ".stego." not in str(error.value)


def test_workers_and_messages_are_bounded(tmp_path):
    with pytest.raises(InputError, match=f"up to {usable_cores()} .the usable cores"):
        StegoSettings("lsbm", workers=usable_cores() + 1)
    with pytest.raises(InputError, match="messages: expected a positive integer up to 256"):
        StegoSettings("lsbm", messages=2**31 - 1)
    from edgetrunc.train.config import TrainConfig

    config = TrainConfig(epochs=3, messages=2**31 - 1, embedding="hill", stego_cache=tmp_path)
    assert config.stego.messages == 3  # a run draws one message per epoch


# cover folders -----------------------------------------------------------------------------

def _flat_png(path: Path, width: int, height: int) -> None:
    """A gray PNG of `width` x `height` zeros, written without holding its pixels."""
    import struct

    compressor, row = zlib.compressobj(9), b"\0" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                        8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def hostile_covers(tmp_path_factory):
    """A cover folder with one good photo, a FIFO, a link to /dev/zero and a 13000x13000
    PNG of about 170 KB."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("covers")
    Image.fromarray(_tile().repeat(20, 0).repeat(20, 1)).save(folder / "good.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    _flat_png(folder / "bomb.png", 13000, 13000)
    assert (folder / "bomb.png").stat().st_size < 200_000
    return folder


def test_a_cover_folder_with_a_fifo_a_device_and_a_bomb_is_read_quickly_in_bounded_memory(
        hostile_covers, tmp_path):
    code = f"""
from edgetrunc.data.stream import scan_covers, use_streaming
covers = scan_covers({str(hostile_covers)!r})
print(use_streaming({str(hostile_covers)!r}), [c.name for c in covers])
"""
    result, rss = run_python(code, tmp_path, timeout=60)
    assert result.stdout.splitlines()[0] == "False ['good']", result.stdout
    assert "fifo.png (not a regular file" in result.stderr
    assert "zero.png (not a regular file" in result.stderr
    assert "bomb.png (13000x13000 is over 89 megapixels" in result.stderr
    assert rss < GIB // 2, rss


def test_a_cover_that_changes_or_vanishes_while_streamed_is_named(tmp_path):
    from PIL import Image

    from edgetrunc.data.stream import scan_covers

    Image.fromarray(_tile().repeat(20, 0).repeat(20, 1)).save(tmp_path / "a.png")
    (ref,) = scan_covers(tmp_path)
    Image.fromarray(_tile()[:8].repeat(20, 0).repeat(20, 1)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="a.png: changed since the folder was read"):
        ref.read()
    (tmp_path / "a.png").unlink()
    with pytest.raises(InputError, match="a.png: no such file"):
        ref.read()


def test_non_utf8_cover_names_split_and_write(tmp_path):
    from PIL import Image

    from edgetrunc.data.covers import load_cover_dir
    from edgetrunc.data.splits import split_sources

    folder = os.fsencode(tmp_path)
    for name in (b"caf\xe9.png", b"b.png", b"c.png"):
        Image.fromarray(_tile().repeat(20, 0).repeat(20, 1)).save(os.fsdecode(folder + b"/" + name))
    covers = load_cover_dir(tmp_path)
    split = split_sources(covers, seed=0)
    assert sorted(sum(split.values(), [])) == sorted(c.name for c in covers)
    report = Path(os.fsdecode(folder + b"/r\xff.html"))
    write_text_atomic(report, f"<p>{covers[-1].origin}</p>")
    assert report.read_text().startswith("<p>") and "\\udce9" in report.read_text()


# .npz inputs -------------------------------------------------------------------------------

def test_an_npz_whose_members_unpack_past_the_bound_is_refused_before_allocation(tmp_path):
    """A few MB compressed, 640 MiB of labels uncompressed: refused from the headers."""
    path = tmp_path / "inputs.npz"
    count = 80 * 2**20
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        np.lib.format.write_array(archive.open("x.npy", "w"), np.zeros((1, 8, 8, 1), np.float32))
        with archive.open("labels.npy", "w", force_zip64=True) as stream:
            np.lib.format.write_array_header_1_0(stream, {"descr": "<i8", "fortran_order": False,
                                                          "shape": (count,)})
            block = bytes(2**24)
            for _ in range(count * 8 // len(block)):
                stream.write(block)
    assert path.stat().st_size < 20 * 2**20
    code = f"""
from edgetrunc.errors import InputError
from edgetrunc.runtime.recorded import load_inputs
try:
    load_inputs({str(path)!r})
except InputError as exc:
    print(exc)
"""
    result, rss = run_python(code, tmp_path)
    assert "over the 536870912 bytes (512 MiB)" in result.stdout, result.stdout
    assert rss < GIB // 2, rss


def test_bad_labels_name_the_inputs_file(tmp_path):
    from edgetrunc.runtime.recorded import load_inputs, save_inputs

    path = tmp_path / "inputs.npz"
    save_inputs(path, np.zeros((2, 8, 8, 1), np.float32), labels=[0, 7])
    with pytest.raises(InputError, match=r"inputs.npz: 'labels' holds 7; expected 0 \(cover\)"):
        load_inputs(path)


# TF_CONFIG ---------------------------------------------------------------------------------

def _tf_config(address="localhost:2222", **extra):
    return json.dumps({"cluster": {"worker": [address]}, "task": {"type": "worker", "index": 0},
                       **extra})


@pytest.mark.parametrize("text, needle", [
    ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deep"),
    (_tf_config("localhost:\u00b2"), "not host:port"),
    (_tf_config("localhost:\u0662\u0662\u0662\u0662"), "not host:port"),
    (_tf_config("local host:2222"), "not host:port"),
    (_tf_config(rpc_layer="grpc+evil"), "rpc_layer 'grpc+evil' is not supported"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": [1], "index": 0}}),
     "task type [1] is not a job"),
])
def test_hostile_tf_config_is_one_line(text, needle):
    from edgetrunc.train.strategy import parse_tf_config

    with pytest.raises(InputError, match=None) as error:
        parse_tf_config(text)
    assert needle in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_workers_that_never_start_are_named_within_the_timeout(tmp_path):
    """A cluster whose second worker never starts: one line naming it, well within 60 s."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    workers = [f"localhost:{port}" for port in ports]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               EDGETRUNC_CLUSTER_TIMEOUT="3",
               TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                     "task": {"type": "worker", "index": 0}}))
    code = "from edgetrunc.train.strategy import make_strategy; make_strategy('multiworker')"
    result = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"not answering: worker 1 ({workers[1]})" in lines[0], lines


# bench --profile -------------------------------------------------------------------------

def test_tflite_profile_memory_does_not_grow_with_the_ops(tmp_path):
    """One prefix interpreter at a time: at batch 16 the shipped model's 19 prefixes together
    took 1.3 GB; one at a time they stay near a single interpreter's memory."""
    code = f"""
from edgetrunc.runtime.profile import profile_artifact
result = profile_artifact({str(ROOT / "models" / "tlunet_fp32.tflite")!r}, runs=1, warmup=0, batch=16)
print(len(result["ops"]))
"""
    result, rss = run_python(code, tmp_path)
    assert int(result.stdout.split()[0]) > 10
    assert rss < 512 * 2**20, rss
