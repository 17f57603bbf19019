"""The dequantized-weight cache: a hit returns exactly what was stored, a changed source or a
damaged entry is never served, "off" stores nothing, an unwritable cache only warns."""

import os
import pathlib

import numpy as np
import pytest

from abpo_jax.models import weight_cache


def _tensors():
    rng = np.random.default_rng(0)
    return [(("embed_tokens", "embedding"), rng.normal(size=(7, 4)).astype(np.float32)),
            (("layers", 3, "mlp", "up_proj", "kernel"), rng.normal(size=(4, 5)).astype(np.float32)),
            (("norm", "weight"), np.arange(4, dtype=np.float32))]


META = {"family": "llama", "num_heads": 9, "rms_norm_eps": 1e-5, "bos_token_id": None}


class Counting:
    """A `read` that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return dict(META), iter(_tensors())


def load(source, read, cache, **extra):
    meta, tensors = weight_cache.cached_checkpoint(str(source), read, cache, **extra)
    assert meta == META
    return tensors


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"weights v1")
    return path


def _same(got, want):
    assert [p for p, _ in got] == [p for p, _ in want]
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), b)
        assert np.asarray(a).dtype == b.dtype


def test_second_load_is_a_hit_with_the_same_tensors(tmp_path, source):
    produce, cache = Counting(), str(tmp_path / "cache")
    first = load(source, produce, cache, family="llama")
    second = load(source, produce, cache, family="llama")
    assert produce.calls == 1
    _same(first, _tensors())
    _same(second, _tensors())
    assert all(isinstance(a, np.memmap) for _, a in second)   # read back memory-mapped


def test_changed_source_or_key_is_a_miss(tmp_path, source):
    produce, cache = Counting(), str(tmp_path / "cache")
    load(source, produce, cache, family="llama")
    load(source, produce, cache, family="qwen2")
    assert produce.calls == 2                                 # the caller's key part counts
    source.write_bytes(b"weights v2, longer")                 # size and mtime change
    load(source, produce, cache, family="llama")
    assert produce.calls == 3
    entries = sorted(p.parent.name for p in pathlib.Path(cache).glob("*/*")
                     if not p.name.startswith("."))
    assert len(entries) == 2 and len(set(entries)) == 2       # llama's older version removed


@pytest.mark.parametrize("damage", ["index", "tensor", "shape", "bit"])
def test_damaged_entry_is_rebuilt(tmp_path, source, damage):
    produce, cache = Counting(), tmp_path / "cache"
    load(source, produce, str(cache))
    (entry,) = [p for p in cache.glob("*/*") if not p.name.startswith(".")]
    if damage == "index":
        (entry / weight_cache.INDEX).write_text("{not json")
    elif damage == "tensor":
        os.remove(entry / "1.npy")
    elif damage == "shape":
        np.save(entry / "1.npy", np.zeros((5, 4), np.float32))
    else:                                                     # one flipped bit in the data
        raw = bytearray((entry / "2.npy").read_bytes())
        raw[-3] ^= 0x10
        (entry / "2.npy").write_bytes(bytes(raw))
    got = load(source, produce, str(cache))
    assert produce.calls == 2
    _same(got, _tensors())
    again = load(source, produce, str(cache))
    assert produce.calls == 2                                 # the rebuilt entry serves
    _same(again, _tensors())


def test_off_stores_nothing(tmp_path, source, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    produce = Counting()
    for _ in range(2):
        _same(load(source, produce, "off"), _tensors())
    assert produce.calls == 2 and not (tmp_path / "xdg").exists()
    assert weight_cache.cache_root("") == tmp_path / "xdg" / "abpo_jax" / "weights"


def test_unwritable_cache_warns_and_loads(tmp_path, source):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(UserWarning, match="model.weight_cache_dir"):
        got = load(source, Counting(), str(blocker / "c"))
    _same(got, _tensors())
