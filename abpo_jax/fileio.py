"""Small file helpers the writers share: a streamed sha256, atomic text writes, dotted keys of
a nested config (checkpoints, log rounds, metrics, study files, the CLI's field lists)."""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any


def sha256_file(path: str | os.PathLike, fsync: bool = False) -> str:
    """sha256 of a file (streamed in 1 MiB chunks); optionally fsync it first."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `path` whole or not at all: temp file in the same directory + fsync + os.replace,
    so a kill or a full disk never leaves a torn file."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def flat_items(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf) of a nested mapping (a ConfigDict or its JSON dict), in order."""
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        if hasattr(value, "items"):
            out += flat_items(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out
