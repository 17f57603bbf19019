"""Transparent huge pages for the host allocator, so XLA:CPU's per-step buffers do not
page-fault in 4 KB at a time.

XLA:CPU allocates an execution's temporaries with malloc (6 GB for the float32 SmolLM2 train
step); glibc serves blocks over 32 MB with fresh mmap'd pages, so every step faults them in page
by page (4.3 M minor faults in a three-step benchmark). glibc >= 2.35's tunable
`glibc.malloc.hugetlb=1` makes malloc madvise such blocks for transparent huge pages: 0.19 M
faults, and the SmolLM2 step 10-15 % faster on the development CPU. Tunables are read when a
process starts, so `ensure()` re-executes the command once with the tunable set, before anything
heavy is imported. `ABPO_JAX_HUGEPAGES=0` turns this off.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "ABPO_JAX_HUGEPAGES"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_at_least(major: int, minor: int) -> bool:
    try:
        lib, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        have = tuple(int(p) for p in version.split(".")[:2])
    except (ValueError, OSError, AttributeError):
        return False
    return lib == "glibc" and have >= (major, minor)


def wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether a re-exec would turn huge pages on: Linux, glibc >= 2.35, THP not `never`, the
    tunable not already set, and not switched off."""
    env = os.environ if environ is None else environ
    if env.get(SWITCH, "1") == "0" or TUNABLE in env.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux") or not _glibc_at_least(2, 35):
        return False
    try:
        with open(THP_MODE) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def tuned_environ(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with the tunable appended to GLIBC_TUNABLES (others kept)."""
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(p for p in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if p)
    return env


def ensure(argv: list[str]) -> None:
    """Re-execute `python -m abpo_jax argv[1:]` with huge pages when `wanted()`; else return.
    The new process sees the tunable set, so it never re-executes again."""
    if wanted():
        os.execve(sys.executable, [sys.executable, "-m", "abpo_jax", *argv[1:]],
                  tuned_environ(dict(os.environ)))
