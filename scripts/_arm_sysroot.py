"""An aarch64 Python with the edgetrunc runtime, run under qemu-user emulation on an x86 host.

`ensure_qemu()` installs Debian's qemu-user-static when it is missing (as root, with apt-get).
`build(cache)` builds, once, in the folder `cache` (ignored by git):

- `sysroot/`: Debian's arm64 Python (`apt-get download` of the packages below for this
  machine's Debian release, unpacked with `dpkg -x`), run as
  `qemu-aarch64-static -L sysroot sysroot/usr/bin/python3.11`;
- `site/`: the aarch64 wheels of `.[runtime]` (numpy, pillow, ai-edge-litert, onnxruntime),
  pinned by constraints.txt, installed by this machine's pip (`--platform ..._aarch64
  --only-binary=:all:`), plus onnx (only to record ONNX intermediate tensors); the edgetrunc
  package itself runs from the source tree on PYTHONPATH, so no TensorFlow ever;
- `profiles/<name>/`: one folder per CPU profile, the sysroot's folders linked in and the
  profile's own `proc/cpuinfo` (qemu opens `-L` paths first; ai-edge-litert and onnxruntime
  choose kernels from /proc/cpuinfo and crash on the host's x86 one).

`command(cache, profile, args)` is the command line that runs `python3.11 args...` for a
profile, with `-cpu` set to the same core, so the feature bits (HWCAP) the kernels see and the
cpuinfo agree; `environment(cache, profile)` its environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QEMU = "qemu-aarch64-static"
PYTHON = "python3.11"
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "zlib1g",
        "libexpat1", "libffi8", "libssl3", "libstdc++6", "libgcc-s1", "libbz2-1.0", "liblzma5",
        "libuuid1")  # Debian 12 (bookworm) names, the Python 3.11 of constraints.txt
DEBIAN = "bookworm"
GLIBC_MINOR = 36  # Debian 12's glibc: wheels tagged manylinux_2_17 .. 2_36 run there
EXTRA_WHEELS = ("onnx",)  # not in the runtime extra: only to record ONNX intermediates

# Honest /proc/cpuinfo of real cores (one line per field as the arm64 kernel prints them).
# A76: Raspberry Pi 5 (BCM2712, Cortex-A76 r4p1): fp16 arithmetic (asimdhp), dot product (asimddp).
# A53: Cortex-A53 r0p4 as in the RK3328 / Amlogic S905 boards: plain NEON (asimd), no fp16 or dot.
_CORE = ("processor\t: {i}\nBogoMIPS\t: {bogomips}\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
         "CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")
PROFILES = {
    "A76": {"qemu_cpu": "cortex-a76", "cores": 4, "bogomips": "108.00", "variant": "0x4",
            "part": "0xd0b", "revision": "1",
            "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                        "asimdrdm lrcpc dcpop asimddp"},
    "A53": {"qemu_cpu": "cortex-a53", "cores": 4, "bogomips": "48.00", "variant": "0x0",
            "part": "0xd03", "revision": "4",
            "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"},
}


class Unavailable(RuntimeError):
    """qemu or the sysroot cannot be set up on this machine (the reason is the message)."""


def cpuinfo(profile: str) -> str:
    spec = PROFILES[profile]
    return "".join(_CORE.format(i=i, **spec) for i in range(spec["cores"]))


def _run(cmd, **kwargs) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kwargs)


def ensure_qemu() -> str:
    """The path of qemu-aarch64-static, installed with apt-get when missing (root only)."""
    found = shutil.which(QEMU)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise Unavailable(f"{QEMU} is not installed and cannot be installed here (needs root and "
                          "apt-get: apt-get install qemu-user-static)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", "qemu-user-static"], env=env)
    found = shutil.which(QEMU)
    if not found:
        raise Unavailable(f"apt-get install qemu-user-static did not provide {QEMU}")
    return found


def _arm64_apt() -> None:
    """Make apt know arm64 packages (dpkg --add-architecture arm64; apt-get update)."""
    if "arm64" in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                                 text=True, check=True).stdout.split():
        return
    if os.geteuid() != 0:
        raise Unavailable("the arm64 sysroot needs arm64 apt packages: run as root, or "
                          "dpkg --add-architecture arm64 && apt-get update first")
    _run(["dpkg", "--add-architecture", "arm64"])
    _run(["apt-get", "update", "-qq"])


def build_sysroot(cache: Path) -> Path:
    root = cache / "sysroot"
    if (root / "usr" / "bin" / PYTHON).exists():
        return root
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise Unavailable("the arm64 sysroot is built from Debian packages: needs apt-get and dpkg")
    if f"VERSION_CODENAME={DEBIAN}" not in _os_release():
        raise Unavailable(f"the arm64 sysroot is built from Debian 12 ({DEBIAN}) packages "
                          "(Python 3.11); this machine runs another release")
    _arm64_apt()
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", *[f"{name}:arm64" for name in DEBS]], cwd=debs,
         stderr=subprocess.DEVNULL)
    staging = cache / "sysroot.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(staging)])
    shutil.rmtree(root, ignore_errors=True)  # an unfinished one
    staging.rename(root)
    return root


def _os_release() -> str:
    try:
        return Path("/etc/os-release").read_text()
    except OSError:
        return ""


def _site_key(requirements) -> str:
    text = (ROOT / "constraints.txt").read_text() + (ROOT / "pyproject.toml").read_text()
    return hashlib.sha256((text + " ".join(requirements)).encode()).hexdigest()[:16]


def build_site(cache: Path, python: str = sys.executable) -> Path:
    """The aarch64 site folder: `.[runtime]` resolved for aarch64 by pip, constraints.txt pins."""
    requirements = [f"{ROOT}[runtime]", *EXTRA_WHEELS]
    site, stamp = cache / "site", cache / "site.key"
    key = _site_key(requirements)
    if site.is_dir() and stamp.exists() and stamp.read_text() == key:
        return site
    staging = cache / "site.partial"
    shutil.rmtree(staging, ignore_errors=True)
    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pip_platform_args(),
          "--target", str(staging), "-c", str(ROOT / "constraints.txt"), *requirements],
         stderr=subprocess.PIPE)
    for stale in [*staging.glob("edgetrunc"), *staging.glob("edgetrunc-*.dist-info")]:
        shutil.rmtree(stale)  # the source tree runs instead (PYTHONPATH)
    shutil.rmtree(site, ignore_errors=True)
    staging.rename(site)
    stamp.write_text(key)
    return site


def pip_platform_args() -> list:
    """pip options that resolve wheels for Python 3.11 on aarch64 Linux (glibc 2.17 .. 2.36)."""
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in range(17, GLIBC_MINOR + 1)]
    args = ["--platform", "manylinux2014_aarch64"]
    for tag in platforms:
        args += ["--platform", tag]
    return args + ["--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:"]


def build_profile(cache: Path, profile: str) -> Path:
    """`profiles/<profile>/`: links to the sysroot's folders and the profile's proc/cpuinfo."""
    sysroot = cache / "sysroot"
    folder = cache / "profiles" / profile
    (folder / "proc").mkdir(parents=True, exist_ok=True)
    for entry in sysroot.iterdir():
        link = folder / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry.resolve())
    info = folder / "proc" / "cpuinfo"
    if not info.exists() or info.read_text() != cpuinfo(profile):
        info.write_text(cpuinfo(profile))
    return folder


def build(cache: Path, profiles=tuple(PROFILES)) -> dict:
    """Everything emulation needs, cached in `cache`; `{"qemu", "sysroot", "site", profile: folder}`.
    Raises `Unavailable` with the reason where qemu or the sysroot cannot be set up."""
    import fcntl

    cache = Path(cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = {"qemu": ensure_qemu(), "sysroot": build_sysroot(cache), "site": build_site(cache)}
        for profile in profiles:
            built[profile] = build_profile(cache, profile)
    return built


def command(cache: Path, profile: str, args) -> list:
    """`qemu-aarch64-static -cpu CORE -L PROFILE PROFILE/usr/bin/python3.11 ARGS...`."""
    folder = Path(cache).resolve() / "profiles" / profile
    return [shutil.which(QEMU) or QEMU, "-cpu", PROFILES[profile]["qemu_cpu"], "-L", str(folder),
            str(folder / "usr" / "bin" / PYTHON), *map(str, args)]


def environment(cache: Path, profile: str) -> dict:
    """The emulated process's environment: source tree and aarch64 site on PYTHONPATH, OpenBLAS
    on its generic ARMv8 kernels (its core detection fails under emulation), the emulator named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({"PYTHONPATH": f"{ROOT}{os.pathsep}{Path(cache).resolve() / 'site'}",
                "OPENBLAS_CORETYPE": "ARMV8",
                "EDGETRUNC_EMULATOR": f"{QEMU} -cpu {PROFILES[profile]['qemu_cpu']}"})
    return env
