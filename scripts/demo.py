"""`make demo`: the whole pipeline on the embedded photographs, command by command.

1. a short training run on a subset of tiles (its figures printed),
2. evaluation of the shipped detector `models/tlunet.keras`,
3. export to every format (TFLite fp32/fp16/int8, ONNX fp32/int8) with the mapping checked,
4. the parity report (terminal, JSON, HTML),
5. on-device inference and a benchmark with the TensorFlow-free runtime,
6. parity of outputs recorded by the runtime (`edgetrunc run`, as on a device) on the saved inputs.

Outputs go to `demo-out/` (or the folder given as the first argument).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args, check=True):
    cmd = [sys.executable, "-m", "edgetrunc", *map(str, args)]
    print(f"\n$ edgetrunc {' '.join(shlex.quote(str(a)) for a in args)}", flush=True)
    start = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT)
    print(f"[exit {code}, {time.monotonic() - start:.1f} s]", flush=True)
    if check and code != 0:
        sys.exit(code)
    return code


def write_sample_images(out: Path):
    """A cover photo and its 0.4 bpp stego version as PNG files, for `edgetrunc infer`."""
    import numpy as np
    from PIL import Image

    from edgetrunc.data import embed_lsb_matching, embedded_covers

    covers = {c.name: c for c in embedded_covers()}
    cover = covers.get("camera") or next(iter(covers.values()))
    pixels = cover.pixels[:512, :512]
    cover_path, stego_path = out / f"{cover.name}_cover.png", out / f"{cover.name}_stego.png"
    Image.fromarray(np.ascontiguousarray(pixels)).save(cover_path)
    Image.fromarray(embed_lsb_matching(pixels, 0.4, seed=1)).save(stego_path)
    return cover_path, stego_path


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "demo-out"
    out.mkdir(parents=True, exist_ok=True)
    shipped = ROOT / "models" / "tlunet.keras"

    print("== 1. a short training run (subset of tiles, 2 epochs) ==")
    run("train", "--model", "tlunet", "--epochs", "2", "--max-tiles", "64", "--max-eval-pairs", "16",
        "--out", out / "quick.keras", "--seed", "0", "--force")

    if not shipped.exists():
        print(f"{shipped.relative_to(ROOT)} is missing: run `make train` first.")
        return 1
    print("\n== 2. the shipped detector on the held-out photos ==")
    run("evaluate", shipped)

    print("\n== 3. export to every format ==")
    artifacts_dir = out / "artifacts"
    run("convert", shipped, "--out", artifacts_dir, "--force")
    artifacts = sorted(artifacts_dir.glob("*.tflite")) + sorted(artifacts_dir.glob("*.onnx"))

    print("\n== 4. parity: Keras vs TFLite vs ONNX Runtime ==")
    parity_code = run("parity", shipped, *artifacts, "--per-layer", "--save-inputs", out / "inputs.npz",
                      "--json", out / "parity.json", "--html", out / "parity.html", check=False)

    print("\n== 5. on-device runtime (no TensorFlow) ==")
    cover_png, stego_png = write_sample_images(out)
    int8 = next((a for a in artifacts if "int8" in a.name and a.suffix == ".tflite"), artifacts[0])
    run("infer", int8, cover_png, stego_png)
    run("bench", *artifacts, "--threads", "1,2", "--runs", "20")

    print("\n== 6. parity of the device's own outputs ==")
    run("run", int8, out / "inputs.npz", "--out", out / "device_int8.npz")
    device_code = run("parity", shipped, out / "device_int8.npz", "--inputs", out / "inputs.npz",
                      "--no-probes", check=False)

    print(f"\nReports: {out / 'parity.html'} and {out / 'parity.json'}")
    return parity_code or device_code


if __name__ == "__main__":
    sys.exit(main())
