"""Where a run happened: architecture, CPU, runtime versions (no TensorFlow).

`where_it_ran()` describes this machine for a recording (`edgetrunc run`): the architecture
(`x86-64`, `aarch64`), the CPU named from `/proc/cpuinfo` (an ARM core by its implementer and
part number, e.g. `Cortex-A76`; an x86 one by its model name), the ARM feature flags the
kernels choose by (`asimdhp` fp16 arithmetic, `asimddp` int8 dot product), the versions of
the runtimes, and the emulator when the run was emulated (`EDGETRUNC_EMULATOR`, set by the
emulated parity script). `where_label(record)` is the short label a report shows:
`aarch64 (Cortex-A76, emulated)`.
"""

from __future__ import annotations

import os
import platform

from edgetrunc._version import package_versions

RUNTIME_PACKAGES = ("numpy", "pillow", "ai-edge-litert", "onnxruntime")
EMULATOR_ENV = "EDGETRUNC_EMULATOR"
ARCHITECTURES = {"x86_64": "x86-64", "amd64": "x86-64", "arm64": "aarch64", "aarch64": "aarch64"}
# (implementer, part) of /proc/cpuinfo -> core name (Arm Ltd. cores, implementer 0x41)
ARM_PARTS = {
    0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57",
    0xd08: "Cortex-A72", 0xd09: "Cortex-A73", 0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76",
    0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77", 0xd40: "Neoverse-V1", 0xd41: "Cortex-A78",
    0xd44: "Cortex-X1", 0xd46: "Cortex-A510", 0xd47: "Cortex-A710", 0xd49: "Neoverse-N2",
}
ARM_KERNEL_FEATURES = ("asimd", "asimdhp", "asimddp", "i8mm", "sve", "bf16")


def parse_cpuinfo(text: str) -> dict:
    """`{"cpu", "features", "cores"}` from the text of `/proc/cpuinfo` (the first core's
    fields; `features`: the ARM flags kernels choose by, empty for other architectures)."""
    fields, cores = {}, 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if key == "processor":
            cores += 1
        fields.setdefault(key, value)
    cpu = fields.get("model name") or fields.get("Model") or fields.get("Hardware")
    try:
        implementer = int(fields.get("CPU implementer", ""), 16)
        part = int(fields.get("CPU part", ""), 16)
    except ValueError:
        implementer = part = None
    if implementer is not None:
        named = ARM_PARTS.get(part) if implementer == 0x41 else None
        cpu = named or f"ARM implementer {implementer:#x} part {part:#x}"
    flags = fields.get("Features", "").split()
    return {"cpu": cpu, "features": [f for f in ARM_KERNEL_FEATURES if f in flags],
            "cores": cores or None}


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            return stream.read(1 << 20)
    except OSError:
        return ""


def where_it_ran() -> dict:
    """This machine: `{"architecture", "machine", "cpu", "features", "cores", "emulator",
    "platform", "versions"}` (`emulator` None on real hardware)."""
    machine = platform.machine()
    where = {"architecture": ARCHITECTURES.get(machine.lower(), machine), "machine": machine}
    where.update(parse_cpuinfo(_read_cpuinfo()))
    where["emulator"] = os.environ.get(EMULATOR_ENV) or None
    where["platform"] = platform.platform()
    where["versions"] = package_versions(RUNTIME_PACKAGES)
    return where


def where_label(where: dict | None) -> str:
    """`aarch64 (Cortex-A76, emulated)`, `x86-64 (AMD EPYC ...)`; '-' when unknown."""
    if not where:
        return "-"
    details = [str(where["cpu"])] if where.get("cpu") else []
    if where.get("emulator"):
        details.append("emulated")
    arch = where.get("architecture") or where.get("machine") or "?"
    return f"{arch} ({', '.join(details)})" if details else str(arch)
