"""Parity on aarch64 without a device: every artifact run by the TensorFlow-free runtime under
qemu-user emulation, for two real CPU profiles, compared with Keras and with x86-64.

1. builds (once, cached in `--cache`, default `.aarch64/`) an arm64 Debian Python and the
   aarch64 wheels of `.[runtime]` (`_arm_sysroot.py`), installing qemu-user-static if needed;
2. saves the inputs with `edgetrunc parity MODEL ARTIFACTS --save-inputs` (x86-64, Keras);
3. records every artifact with `edgetrunc run --intermediates K` here (x86-64) and under
   emulation for each profile (A76: Cortex-A76 with fp16 and dot product; A53: Cortex-A53,
   plain NEON), the `-cpu` of qemu matching the profile's /proc/cpuinfo;
4. compares every recording with Keras (`edgetrunc parity MODEL RECORDINGS --inputs`), and each
   aarch64 recording with the x86-64 one, output by output and tensor by tensor
   (`edgetrunc.parity.recordings`): int8 outputs within one quantization step, float outputs
   by the fp32 element rule.

Emulated time says nothing about a device's speed and is never reported. Exit 0 when
everything passes, 1 on a parity failure, 2 when emulation cannot be set up.

    python scripts/arm_parity.py [ARTIFACT...] [--model models/tlunet.keras] [--samples 4]
        [--intermediates 2] [--profiles A76,A53] [--out out/arm-parity] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _arm_kernels  # noqa: E402
import _arm_sysroot  # noqa: E402

ROOT = _arm_sysroot.ROOT
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def default_artifacts() -> list:
    return sorted(p for p in (ROOT / "models").iterdir() if p.suffix in (".tflite", ".onnx"))


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    """`edgetrunc ARGS` on this machine (x86-64, with Keras)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "edgetrunc", "-q", *map(str, args)], env=env,
                          capture_output=True, text=True)
    if check and done.returncode not in (0, 1):
        raise SystemExit(f"edgetrunc {' '.join(map(str, args[:2]))}: exit {done.returncode}\n"
                         f"{done.stderr.strip()[-2000:]}")
    return done


def save_inputs(model, artifacts, samples: int, path: Path) -> None:
    cli("parity", model, *artifacts, "--samples", samples, "--no-probes", "--save-inputs", path)


def record_here(artifact, inputs, out: Path, intermediates: int) -> None:
    cli("run", artifact, inputs, "--out", out, "--threads", 1, "--intermediates", intermediates)


def record_emulated(cache, profile, artifact, inputs, out: Path, intermediates: int,
                    trace: Path | None = None) -> None:
    """`edgetrunc run` under qemu for `profile`, one thread (the host's cores are shared);
    with `trace`, the code qemu translated is logged there (`_arm_kernels`)."""
    args = ["-m", "edgetrunc", "-q", "run", Path(artifact).resolve(), Path(inputs).resolve(),
            "--out", out.resolve(), "--threads", 1]
    if intermediates:
        args += ["--intermediates", intermediates]
    command = _arm_sysroot.command(cache, profile, args)
    if trace:
        command = _arm_kernels.traced(command, trace)
    done = subprocess.run(command, cwd=ROOT, capture_output=True,
                          text=True, env=_arm_sysroot.environment(cache, profile))
    if done.returncode:
        raise SystemExit(f"emulated edgetrunc run {Path(artifact).name} ({profile}): exit "
                         f"{done.returncode}\n{done.stderr.strip()[-2000:]}")


def recordings(artifacts, inputs, out: Path, cache, profiles, intermediates: int) -> dict:
    """`{artifact: {"x86-64": path, profile: path, ...}}`, every artifact recorded everywhere."""
    found = {}
    for artifact in artifacts:
        stem = Path(artifact).name.replace(".", "_")
        paths = {"x86-64": out / f"{stem}.x86-64.npz"}
        record_here(artifact, inputs, paths["x86-64"], intermediates)
        for profile in profiles:
            paths[profile] = out / f"{stem}.aarch64-{profile}.npz"
            started = time.perf_counter()
            record_emulated(cache, profile, artifact, inputs, paths[profile], intermediates)
            print(f"  {Path(artifact).name} on aarch64 ({profile}, emulated): recorded "
                  f"({time.perf_counter() - started:.0f} s of emulation)", file=sys.stderr)
        found[str(artifact)] = paths
    return found


def kernels(artifacts, inputs, out: Path, cache, profiles) -> list:
    """`[(artifact, profile, {kind: count})]`: the kernel instructions each profile made the
    runtime translate for one input of each artifact (without intermediates: the outputs' path)."""
    from edgetrunc.runtime.recorded import load_inputs, save_inputs

    x, labels, names = load_inputs(inputs)
    one = out / "kernels-input.npz"
    save_inputs(one, x[:1], labels[:1], names[:1])
    rows = []
    for artifact in artifacts:
        for profile in profiles:
            log = out / f"{Path(artifact).name}.{profile}.in_asm.log"
            record = out / f"{Path(artifact).name}.{profile}.kernels.npz"
            record.unlink(missing_ok=True)
            record_emulated(cache, profile, artifact, one, record, 0, trace=log)
            rows.append((Path(artifact).name, profile, _arm_kernels.count(log)))
            log.unlink()
    return rows


def compare(found: dict) -> list:
    from edgetrunc.parity.recordings import compare_recordings

    return [compare_recordings(paths["x86-64"], path)
            for paths in found.values() for name, path in paths.items() if name != "x86-64"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="*", help="artifacts (default: every .tflite / .onnx in models/)")
    p.add_argument("--model", default=str(ROOT / "models" / "tlunet.keras"))
    p.add_argument("--samples", type=int, default=4, help="inputs (default: 4)")
    p.add_argument("--intermediates", type=int, default=2,
                   help="inputs whose every tensor is recorded and compared (default: 2)")
    p.add_argument("--profiles", default=",".join(_arm_sysroot.PROFILES),
                   help="CPU profiles (default: A76,A53)")
    p.add_argument("--cache", default=str(ROOT / ".aarch64"), help="sysroot cache (default: .aarch64)")
    p.add_argument("--out", default=str(ROOT / "out" / "arm-parity"), help="recordings and reports")
    p.add_argument("--json", default=None, help="write the summary as JSON")
    p.add_argument("--kernels", action="store_true",
                   help="also count the dot-product, fp16 and widening int8 instructions each "
                   "profile makes the runtimes take (one traced input per artifact)")
    p.add_argument("--per-layer", action="store_true",
                   help="print every tensor's x86-64 vs aarch64 difference, per artifact and profile")
    p.add_argument("--no-write", action="store_true",
                   help="do not write the arm section of BENCHMARKS.md (written when every "
                   "artifact of models/ was run)")
    p.add_argument("--from-json", default=None, metavar="SUMMARY",
                   help="only rewrite the BENCHMARKS.md section from an earlier --json summary")
    args = p.parse_args(argv)
    args.profiles = [name.strip() for name in args.profiles.split(",") if name.strip()]
    unknown = [name for name in args.profiles if name not in _arm_sysroot.PROFILES]
    if unknown:
        p.error(f"--profiles: unknown {', '.join(unknown)}; expected {', '.join(_arm_sysroot.PROFILES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        import _arm_report

        _arm_report.write(json.loads(Path(args.from_json).read_text()))
        return 0
    artifacts = [Path(a) for a in args.artifacts] or default_artifacts()
    try:
        _arm_sysroot.build(Path(args.cache), args.profiles)
    except (_arm_sysroot.Unavailable, subprocess.CalledProcessError) as exc:
        print(f"arm-parity: emulation unavailable: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / "inputs.npz"
    save_inputs(args.model, artifacts, args.samples, inputs)
    found = recordings(artifacts, inputs, out, args.cache, args.profiles, args.intermediates)
    keras = cli("parity", args.model, *[p for paths in found.values() for p in paths.values()],
                "--inputs", inputs, "--no-probes", "--json", out / "parity.json")
    from edgetrunc.parity.recordings import per_layer, side_by_side

    comparisons = compare(found)
    print("Keras vs every recording (edgetrunc parity MODEL RECORDINGS --inputs INPUTS.npz):")
    print(keras.stdout)
    print("x86-64 vs aarch64, per artifact (outputs; largest per-tensor difference):")
    print(side_by_side(comparisons))
    for c in comparisons if args.per_layer else ():
        print("\n" + per_layer(c))
    passed = keras.returncode == 0 and all(c.passed for c in comparisons)
    for c in comparisons:
        for failure in c.failures:
            print(f"  FAIL {c.artifact} {c.other}: {failure}")
    kernel_rows = kernels(artifacts, inputs, out, args.cache, args.profiles) if args.kernels else []
    for name, profile, counts in kernel_rows:
        print(f"  kernels of {name} on {profile}: " + (", ".join(f"{k} {v}" for k, v in counts.items())
                                                      or "none of the counted kinds"))
    summary = {"kernels": [list(row) for row in kernel_rows],
               "passed": passed, "intermediates": args.intermediates, "profiles": args.profiles,
               "keras_parity": json.loads((out / "parity.json").read_text()),
               "x86_vs_aarch64": [c.to_dict() for c in comparisons]}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if not args.no_write and not args.artifacts:
        import _arm_report

        _arm_report.write(summary)
    print(f"arm-parity {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
