"""Tokenizers: a thin wrapper over `tokenizers.Tokenizer` for HF directories, GGUF metadata and
the word-level item-id vocabulary of a from-scratch decoder.

Chat templates shipped with a model (`tokenizer_config.json` / GGUF `tokenizer.chat_template`)
are rendered with jinja2 the way transformers does; without one, a built-in format is chosen by
family (ChatML, Llama-3, Gemma, or plain `ids_only` for item tokenizers).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from typing import Any, Sequence

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

# GGUF token types (llama.cpp `llama_token_type`).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp pre-tokenizer regexes (src/llama-vocab.cpp), keyed by `tokenizer.ggml.pre`.
_GPT2_REGEX = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                 r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split(regex: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


def gguf_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    """The `tokenizers` pre-tokenizer equivalent to llama.cpp's handling of `tokenizer.ggml.pre`.

    smollm / starcoder / refact: single digits split off, then GPT-2 byte-level regex (this is
    also what SmolLM2's own tokenizer.json declares: Digits(individual) + ByteLevel).
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raw_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in (None, "default", "gpt2", "gpt-2"):
        return byte_level
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        return pre_tokenizers.Sequence([_split(_LLAMA3_REGEX), raw_bytes])
    if pre in ("qwen2", "deepseek-r1-qwen"):
        return pre_tokenizers.Sequence([_split(_QWEN2_REGEX), raw_bytes])
    raise ValueError(f"GGUF tokenizer.ggml.pre={pre!r} is not supported (smollm, gpt2, "
                     "llama-bpe, qwen2); load the model's tokenizer.json instead")


class Tokenizer:
    """`encode`/`decode` (no special tokens added), ids of eos/pad/bos, chat templating."""

    def __init__(self, backend: HFTokenizer, *, eos_id: int, pad_id: int | None = None,
                 bos_id: int | None = None, chat_template: str | None = None,
                 family: str = "chatml", default_system: str | None = None):
        self.backend = backend
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.bos_id = bos_id
        self.chat_template = chat_template
        self.family = family
        self.default_system = default_system

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text are recognised."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def _token(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.id_to_token(token_id) or "")

    def apply_chat_template(self, messages: Sequence[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """Render role/content messages as the model's prompt text."""
        if self.chat_template:
            return _render_jinja(self.chat_template, messages, add_generation_prompt,
                                 bos_token=self._token(self.bos_id),
                                 eos_token=self._token(self.eos_id))
        return builtin_chat_format(self.family, messages, add_generation_prompt,
                                   bos=self._token(self.bos_id),
                                   default_system=self.default_system)

    def save_hf_dir(self, directory: str | os.PathLike) -> None:
        """`tokenizer.json` + `tokenizer_config.json` (special tokens, chat template): what
        `from_hf_dir` reads back."""
        d = pathlib.Path(directory)
        self.backend.save(str(d / "tokenizer.json"))
        cfg = {key: self.id_to_token(i) for key, i in
               (("eos_token", self.eos_id), ("pad_token", self.pad_id), ("bos_token", self.bos_id))
               if i is not None}
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        else:   # no template (Gemma's base GGUF): the built-in format it falls back to
            cfg[CHAT_FAMILY_KEY] = self.family
        (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))

    # --- constructors -----------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
        """From `tokenizer.json` (+ `tokenizer_config.json` for special tokens and template)."""
        d = pathlib.Path(directory)
        path = d / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (an HF tokenizer directory needs it)")
        backend = HFTokenizer.from_file(str(path))
        cfg_path = d / "tokenizer_config.json"
        cfg: dict[str, Any] = {}
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from e
        template = cfg.get("chat_template")
        jinja_path = d / "chat_template.jinja"
        if template is None and jinja_path.exists():
            template = jinja_path.read_text()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"),
                            template[0]["template"])

        def tok_id(key: str) -> int | None:
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if value else None

        eos_id = tok_id("eos_token")
        if eos_id is None:
            raise ValueError(f"{cfg_path}: eos_token is missing or not in the vocabulary")
        return cls(backend, eos_id=eos_id, pad_id=tok_id("pad_token"), bos_id=tok_id("bos_token"),
                   chat_template=template,
                   family=cfg.get(CHAT_FAMILY_KEY) or _family_from_template(template))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, reader: Any = None,
                  weight_cache: str | None = "") -> "Tokenizer":
        """Tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE (`gpt2`)
        or Gemma's SentencePiece BPE (`llama` in a gemma3 file).

        Parsing the metadata takes seconds, so the built tokenizer (its `tokenizers` JSON and
        special ids) is kept in `weight_cache` (`model.weight_cache_dir`,
        `models/weight_cache.py`) beside the file's dequantized weights."""
        from abpo_jax.models import weight_cache as weight_cache_lib

        path = str(path)
        meta, _ = weight_cache_lib.cached_checkpoint(
            path, lambda: (_gguf_tokenizer_fields(path, reader), []), weight_cache,
            kind="tokenizer")
        template = meta["chat_template"]
        return cls(HFTokenizer.from_str(meta["backend"]), eos_id=meta["eos_id"],
                   pad_id=meta["pad_id"], bos_id=meta["bos_id"], chat_template=template,
                   family=meta.get("family") or _family_from_template(template))


def _gguf_tokenizer_fields(path: str, reader: Any = None) -> dict[str, Any]:
    """What `Tokenizer.from_gguf` builds from a GGUF file, as JSON-serialisable fields."""
    import gguf

    from abpo_jax.models.loaders import gguf_field

    reader = reader or gguf.GGUFReader(path)
    kind = gguf_field(reader, "tokenizer.ggml.model")
    arch = gguf_field(reader, "general.architecture")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    types = gguf_field(reader, "tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    family, spelled = None, tokens
    if kind == "gpt2":
        backend = _byte_level_bpe(tokens, gguf_field(reader, "tokenizer.ggml.merges") or [],
                                  gguf_field(reader, "tokenizer.ggml.pre"))
    elif kind == "llama" and str(arch).startswith("gemma"):
        spelled = gemma_spelling(tokens)
        backend, family = _gemma_spm_bpe(spelled), "gemma"
    else:
        raise ValueError(f"{path}: GGUF tokenizer.ggml.model={kind!r} (architecture {arch!r}) is "
                         "not supported; byte-level BPE ('gpt2') and Gemma's SentencePiece "
                         "('llama' in a gemma file) are")
    # Control tokens are special; user-defined ones are matched in text but kept on decode
    # (whitespace runs respelled for Gemma are left to the BPE, as transformers does).
    added = [AddedToken(tokens[i], special=(t == _CONTROL), normalized=False)
             for i, t in enumerate(types)
             if t in (_CONTROL, _USER_DEFINED) and spelled[i] == tokens[i]]
    backend.add_tokens(added)
    eos = gguf_field(reader, "tokenizer.ggml.eos_token_id")
    if eos is None:
        raise ValueError(f"{path}: GGUF metadata tokenizer.ggml.eos_token_id is missing")

    def plain(value: Any) -> Any:
        return None if value is None else int(value)
    return {"backend": backend.to_str(), "eos_id": int(eos),
            "pad_id": plain(gguf_field(reader, "tokenizer.ggml.padding_token_id")),
            "bos_id": plain(gguf_field(reader, "tokenizer.ggml.bos_token_id")),
            "chat_template": gguf_field(reader, "tokenizer.chat_template"), "family": family}


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None) -> HFTokenizer:
    """GPT-2 style byte-level BPE from the file's vocabulary and merges."""
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                     fuse_unk=False, byte_fallback=False)
    backend = HFTokenizer(bpe)
    backend.pre_tokenizer = gguf_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    return backend


def gemma_merges(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece-BPE vocabulary that lists none (Gemma GGUFs).

    Every split of a token into two vocabulary tokens is a merge; merges rank by the merged
    token's position in the file (earlier = merged first: Gemma's scores do not follow its merge
    order, the file's order does), ties by the pieces' lengths and ids. This is transformers'
    `generate_merges` with the position as score, what its GGUF Gemma tokenizer does."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for merged, rank in vocab.items():
        local = [(merged[:k], merged[k:]) for k in range(1, len(merged))
                 if merged[:k] in vocab and merged[k:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        ranked.extend((rank, left, right) for left, right in local)
    # stable sort: equal keys keep the per-token id order above
    ranked.sort(key=lambda m: (m[0], -len(m[1]), -len(m[2])))
    return [(left, right) for _, left, right in ranked]


def gemma_spelling(tokens: Sequence[str]) -> list[str]:
    """Gemma GGUFs store whitespace-run tokens with real spaces; the normalized text spells
    spaces U+2581, so those tokens (and the merges built from them) are respelled."""
    return ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]


def _gemma_spm_bpe(spelled: list[str]) -> HFTokenizer:
    """Gemma's tokenizer as transformers builds it from a GGUF (GemmaTokenizer): BPE over the
    text with spaces spelled U+2581, byte fallback for characters outside the vocabulary, no
    prefix space; `spelled` is the file's vocabulary through `gemma_spelling`."""
    vocab = {t: i for i, t in enumerate(spelled)}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=gemma_merges(spelled), fuse_unk=True,
                                     unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "),
                                         decoders.ByteFallback(), decoders.Fuse()])
    return backend


# --- item-id vocabulary ---------------------------------------------------------------------

ITEM_SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
# Same strings as `abpo_jax.data.prompts.IDS_ONLY_TAGS` (models/ does not import data/).
ITEM_TAGS = ("<history>", "</history>", "<candidates>", "</candidates>", "<item_id>",
             "</item_id>")


def item_tokenizer(short_ids: Sequence[str], tags: Sequence[str] = ITEM_TAGS) -> Tokenizer:
    """Word-level tokenizer over [PAD] [UNK] [BOS] [EOS], `tags`, then one token per short id.

    Tags are matched anywhere (so `<item_id>7</item_id>` splits into three tokens); other text
    splits on whitespace; unknown words map to [UNK]. Ids: [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3.
    """
    words = list(ITEM_SPECIALS) + list(tags) + [str(s) for s in short_ids]
    if len(set(words)) != len(words):
        dup = sorted({w for w in words if words.count(w) > 1})
        raise ValueError(f"item_tokenizer: duplicate vocabulary entries {dup[:5]}")
    bad = [s for s in short_ids if not str(s) or any(ch.isspace() for ch in str(s))]
    if bad:
        raise ValueError(f"item_tokenizer: short ids must be non-empty without spaces: {bad[:5]}")
    backend = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ITEM_SPECIALS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    return Tokenizer(backend, eos_id=3, pad_id=0, bos_id=2, family="ids_only")


# tokenizer_config.json key (ours; transformers ignores unknown keys) naming the built-in chat
# format of a tokenizer that has no chat_template, as `save_hf_dir` writes it.
CHAT_FAMILY_KEY = "abpo_jax_chat_family"

TOKENIZER_SOURCES = ("smollm2", "gemma3_270m", "hf", "gguf", "tiny")


def load_tokenizer(source: str, path: str | None = None,
                   short_ids: Sequence[str] | None = None,
                   weight_cache: str | None = "") -> Tokenizer:
    """The tokenizer of a `config.model.source`: a packaged model's GGUF (`smollm2`,
    `gemma3_270m`), an HF directory's (`hf`, path), a GGUF file's (`gguf`, path; GGUF ones are
    cached in `weight_cache`), or the item-id vocabulary over `short_ids` (`tiny`)."""
    if source == "tiny":
        if short_ids is None:
            raise ValueError("load_tokenizer: model.source=tiny needs short_ids (the item-id "
                             "vocabulary)")
        return item_tokenizer(short_ids)
    if source in ("smollm2", "gemma3_270m"):
        from abpo_jax.models.loaders import packaged_gguf_path  # lazy: loaders pulls in jax
        return Tokenizer.from_gguf(packaged_gguf_path(source, weight_cache),
                                   weight_cache=weight_cache)
    if source not in TOKENIZER_SOURCES:
        raise ValueError(f"load_tokenizer: model.source={source!r}; expected one of "
                         f"{TOKENIZER_SOURCES}")
    if not path:
        raise ValueError(f"load_tokenizer: model.source={source} needs model.path")
    if source == "hf":
        return Tokenizer.from_hf_dir(path)
    return Tokenizer.from_gguf(path, weight_cache=weight_cache)


# --- chat formats -----------------------------------------------------------------------------

def _family_from_template(template: str | None) -> str:
    if not template or "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<start_of_turn>" in template:
        return "gemma"
    return "chatml"


def builtin_chat_format(family: str, messages: Sequence[dict[str, str]],
                        add_generation_prompt: bool = True, bos: str = "",
                        default_system: str | None = None) -> str:
    """Chat prompt without a jinja template: chatml | llama3 | gemma | ids_only."""
    msgs = list(messages)
    if family == "ids_only":
        text = bos + " " + " ".join(m["content"] for m in msgs)
        return text + (" " if add_generation_prompt else "")
    if family == "chatml":
        if default_system and (not msgs or msgs[0]["role"] != "system"):
            msgs = [{"role": "system", "content": default_system}] + msgs
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    if family == "llama3":
        text = bos + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                             f"{m['content'].strip()}<|eot_id|>" for m in msgs)
        return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n"
                       if add_generation_prompt else "")
    if family == "gemma":
        # Gemma has no system role: the system text is prepended to the first user turn.
        system = ""
        if msgs and msgs[0]["role"] == "system":
            system, msgs = msgs[0]["content"] + "\n\n", msgs[1:]
        parts = []
        for i, m in enumerate(msgs):
            role = "model" if m["role"] == "assistant" else m["role"]
            content = (system if i == 0 else "") + m["content"].strip()
            parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
        return bos + "".join(parts) + ("<start_of_turn>model\n" if add_generation_prompt else "")
    raise ValueError(f"chat format {family!r} is not known (chatml, llama3, gemma, ids_only)")


def _render_jinja(template: str, messages: Sequence[dict[str, str]], add_generation_prompt: bool,
                  **special: str) -> str:
    """Render an HF chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 is a listed dependency
        raise ImportError("rendering the model's chat template needs jinja2: "
                          "pip install 'jinja2>=3.1'") from None

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    # Llama-3 templates stamp the date; transformers exposes this helper for them.
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(template).render(messages=list(messages),
                                            add_generation_prompt=add_generation_prompt,
                                            **special)
