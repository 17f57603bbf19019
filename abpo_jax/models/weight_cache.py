"""A host cache of dequantized checkpoint tensors, so a second process skips dequantizing.

Reading SmolLM2's Q4_1 GGUF (parsing its metadata, ~7 s, then dequantizing) takes most of a
run's start-up on a 2-core CPU; the metadata-derived fields and the float32 tensors read back
memory-mapped take well under a second.
Entries live in `model.weight_cache_dir` ("" = `$XDG_CACHE_HOME/abpo_jax/weights`, else
`~/.cache/abpo_jax/weights`; "off" disables), one directory per source, keyed on the source
file's resolved path, size and modification time, the loader's layout version and whatever the
caller adds (e.g. the model family, which decides how q/k rows are permuted): a changed file,
layout or loader makes a new key, never a stale hit.

An entry is written into a temporary directory and renamed into place (readers never see half
an entry) and carries an index of every tensor's name, shape, dtype and CRC-32; an entry whose
index or files do not match (a torn copy, a flipped bit) is ignored and rebuilt. A cache that
cannot be written (read-only or full disk) costs one warning, not the load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import warnings
import zlib
from typing import Any, Callable, Iterator

import numpy as np

OFF = "off"
# Bump when the cached tensors' layout changes (names, transposes, permutations).
LAYOUT_VERSION = 1
INDEX = "index.json"

Path = tuple[Any, ...]


def cache_root(configured: str | None) -> pathlib.Path | None:
    """The cache directory for `model.weight_cache_dir` (None when it is "off")."""
    configured = str(configured or "")
    if configured == OFF:
        return None
    if configured:
        return pathlib.Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "abpo_jax" / "weights"


def entry_dir(root: pathlib.Path, source: str, **extra: Any) -> pathlib.Path:
    """`root/<source path, extra>/<source as it is now>`: the second part hashes the file's
    size and mtime and the layout version, so a changed file or layout gets a new entry (and
    the entries of the file's older versions are removed when it is written)."""
    stat = os.stat(source)
    what = {"path": os.path.realpath(source), **extra}
    ident = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "layout": LAYOUT_VERSION}

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()
                              ).hexdigest()[:24]
    return root / digest(what) / digest(ident)


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _encode(path: Path) -> list:
    return [p if isinstance(p, int) else str(p) for p in path]


Entry = tuple[dict[str, Any], list[tuple[Path, np.ndarray]]]


def _read(entry: pathlib.Path) -> Entry | None:
    """The entry's metadata and tensors (memory-mapped), or None if it is absent or does not
    match its index."""
    try:
        index = json.loads((entry / INDEX).read_text())
        out = []
        for i, item in enumerate(index["tensors"]):
            array = np.load(entry / f"{i}.npy", mmap_mode="r", allow_pickle=False)
            if (list(array.shape) != item["shape"] or str(array.dtype) != item["dtype"]
                    or _crc(array) != item["crc32"]):
                return None
            out.append((tuple(item["path"]), array))
        return dict(index["meta"]), out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(entry: pathlib.Path, meta: dict[str, Any],
           tensors: list[tuple[Path, np.ndarray]]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        index = []
        for i, (path, array) in enumerate(tensors):
            array = np.ascontiguousarray(array)
            np.save(tmp / f"{i}.npy", array, allow_pickle=False)
            index.append({"path": _encode(path), "shape": list(array.shape),
                          "dtype": str(array.dtype), "crc32": _crc(array)})
        (tmp / INDEX).write_text(json.dumps({"meta": meta, "tensors": index}))
        for old in entry.parent.iterdir():   # the source's older versions, or a damaged entry
            if old != tmp and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not entry.exists():    # another process may have won the rename: that is fine
            raise


def cached_checkpoint(source: str,
                      read: Callable[[], tuple[dict[str, Any], Iterator[tuple[Path, np.ndarray]]]],
                      cache_dir: str | None, **key_extra: Any) -> Entry:
    """`read()`'s (metadata, (path, array) pairs) for the file `source`, from the cache when an
    entry for it exists; on a miss `read()` runs, and what it gives is stored and returned in
    the same order. The metadata must be JSON-serialisable.
    """
    root = cache_root(cache_dir)
    if root is None or not os.path.isfile(source):
        meta, tensors = read()
        return meta, list(tensors)
    entry = entry_dir(root, source, **key_extra)
    hit = _read(entry)
    if hit is not None:
        return hit
    meta, produced = read()
    tensors = [(path, np.asarray(array)) for path, array in produced]
    try:
        _write(entry, meta, tensors)
    except OSError as e:
        warnings.warn(f"model.weight_cache_dir={str(root)!r}: cannot store what {source} "
                      f"gave ({e}); the next load reads the file again", stacklevel=2)
    return meta, tensors
