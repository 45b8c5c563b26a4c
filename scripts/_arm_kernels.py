"""Which kernels a CPU profile made the runtimes take: instructions qemu translated.

qemu's `-d in_asm -D LOG` writes every block of guest code it translates (once per block).
`count(LOG)` counts the instruction kinds that tell the kernels apart: int8 dot product
(`sdot` / `udot`, ARMv8.2 DotProd, A76 only), the widening multiply-accumulates of plain-NEON
int8 kernels (`smull` / `smlal` / `sadalp`), and fp16 vector arithmetic (ARMv8.2 FP16). qemu's
disassembler predates DotProd and FP16, so those are recognized from their encodings.
These are counts of distinct translated instructions (code taken), not of executions.
"""

from __future__ import annotations

import re
from collections import Counter

_LINE = re.compile(r"0x[0-9a-f]+:\s+([0-9a-f]{8})\s+(\S+)")
_WIDENING = {"smull", "smull2", "smlal", "smlal2", "sadalp"}


def _kind(word: int, mnemonic: str) -> str | None:
    if (word & 0xBFE0FC00) in (0x0E809400, 0x2E809400) or (word & 0xBFC0F400) in (0x0F80E000, 0x2F80E000):
        return "dot product (sdot/udot)"
    # Advanced SIMD three-same FP16 (fadd/fmul/fmla/... .4h/.8h): 0Q0U 1110 010m mmmm 00oo o1nn nnnd dddd
    if (word & 0x9F60C400) == 0x0E400400:
        return "fp16 arithmetic"
    if mnemonic in _WIDENING:
        return "widening int8 multiply (smull/smlal/sadalp)"
    return None


def count(log_path) -> dict:
    """`{kind: distinct translated instructions}` of a qemu `-d in_asm` log."""
    kinds = Counter()
    with open(log_path, errors="replace") as stream:
        for line in stream:
            match = _LINE.match(line)
            if match:
                kind = _kind(int(match.group(1), 16), match.group(2))
                if kind:
                    kinds[kind] += 1
    return dict(kinds)


def traced(command: list, log_path) -> list:
    """`command` (a qemu command line) with its translated code logged to `log_path`."""
    return [command[0], "-d", "in_asm", "-D", str(log_path), *command[1:]]
