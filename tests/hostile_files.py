"""Helpers of the hostile-input tests: a fresh interpreter with its peak memory, files that
unpack far beyond their size."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def run_python(code: str, cwd, timeout: float = 60) -> tuple[subprocess.CompletedProcess, int]:
    """Run `code` in a fresh interpreter; `(result, peak RSS in bytes)`. The code's last
    stdout line is left for the caller; the peak RSS is printed after it. The peak is the
    interpreter's own (VmHWM): `ru_maxrss` would also count the test process's peak, which
    Linux carries over fork and exec."""
    wrapped = code + textwrap.dedent("""
        import re
        with open("/proc/self/status") as status:
            print(int(re.search(r"VmHWM:\\s*(\\d+) kB", status.read()).group(1)) * 1024)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", wrapped], cwd=cwd, env=env, text=True,
                            capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result, int(result.stdout.split()[-1])


def flat_png(path: Path, width: int, height: int) -> None:
    """A gray PNG of `width` x `height` zeros, written without holding its pixels."""
    import struct

    compressor, row = zlib.compressobj(9), b"\0" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                        8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
