"""Tokenizers: GGUF-derived BPE vs the transformers GGUF tokenizer, chat templates, item vocab."""

import json

import pytest

from abpo_jax.models import loaders
from abpo_jax.models import tokenizer as tokenizer_module
from abpo_jax.models.tokenizer import (ITEM_TAGS, Tokenizer, builtin_chat_format,
                                       item_tokenizer)

STRINGS = [
    "What is the capital of France?",
    "Hello world 12345 it's 3.14159, isn't it?",
    "  leading spaces\n\nand\ttabs  \n",
    "Ünïcödé naïve café — 東京 🚀🎬 emoji",
    "<|im_start|>user\nRecommend a movie<|im_end|>\n<|im_start|>assistant\n",
    "<item_id>A17</item_id> Toy Story (1995) | Jumanji (1995)",
    "don't WON'T we'll they've I'm you'd",
    "",
]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=["built", "cached"])
def smollm2(request, tmp_path_factory):
    """The GGUF tokenizer as built from the file's metadata, and as read back from the weight
    cache (building is made to fail, so it is a hit): both must match transformers."""
    gguf = pytest.importorskip("gguf")
    path = loaders.smollm2_gguf_path()
    cache = str(tmp_path_factory.mktemp("weights"))
    built = Tokenizer.from_gguf(path, reader=gguf.GGUFReader(path), weight_cache=cache)
    if request.param == "built":
        return path, built
    with pytest.MonkeyPatch.context() as mp:
        def no_build(*args, **kwargs):
            raise AssertionError("built again on a cache hit")
        mp.setattr(tokenizer_module, "_gguf_tokenizer_fields", no_build)
        return path, Tokenizer.from_gguf(path, weight_cache=cache)


@pytest.fixture(scope="module")
def hf_reference(smollm2):
    transformers = pytest.importorskip("transformers")
    path, _ = smollm2
    directory, name = path.rsplit("/", 1)
    return transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)


@pytest.mark.slow
def test_gguf_tokenizer_matches_transformers(smollm2, hf_reference):
    _, tok = smollm2
    for text in STRINGS:
        ours = tok.encode(text)
        assert ours == hf_reference.encode(text, add_special_tokens=False), text
        assert tok.decode(ours) == text


@pytest.mark.slow
def test_gguf_known_ids_and_specials(smollm2):
    _, tok = smollm2
    # SmolLM2 vocabulary facts: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2; eos is <|im_end|>
    assert tok.encode("<|endoftext|><|im_start|><|im_end|>") == [0, 1, 2]
    assert tok.eos_id == 2 and tok.bos_id == 1 and tok.pad_id == 2
    assert tok.vocab_size == 49152
    # Digits are split individually (smollm pre-tokenizer), text keeps GPT-2 byte-level pieces
    assert [tok.id_to_token(i) for i in tok.encode("2024")] == ["2", "0", "2", "4"]
    assert tok.decode(tok.encode("<|im_end|>hi"), skip_special_tokens=True) == "hi"


@pytest.mark.slow
def test_gguf_chat_template_matches_transformers(smollm2, hf_reference):
    _, tok = smollm2
    with_system = [{"role": "system", "content": "Be brief."}] + MESSAGES
    for msgs in (MESSAGES, with_system):
        for gen in (True, False):
            want = hf_reference.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert tok.apply_chat_template(msgs, add_generation_prompt=gen) == want
    assert tok.apply_chat_template(MESSAGES).endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_builtin_formats():
    chatml = builtin_chat_format("chatml", MESSAGES, default_system="S")
    assert chatml == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
                      "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    llama3 = builtin_chat_format("llama3", MESSAGES, bos="<|begin_of_text|>")
    assert llama3 == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                      "What is the capital of France?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    gemma = builtin_chat_format("gemma", [{"role": "system", "content": "S"}] + MESSAGES,
                                bos="<bos>")
    assert gemma == ("<bos><start_of_turn>user\nS\n\nWhat is the capital of France?"
                     "<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(ValueError, match="not known"):
        builtin_chat_format("nope", MESSAGES)


def test_item_tokenizer():
    from abpo_jax.data.prompts import IDS_ONLY_TAGS, render_completion

    assert tuple(ITEM_TAGS) == tuple(IDS_ONLY_TAGS)
    tok = item_tokenizer(["A1", "B22", "7"])
    ids = {t: tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "<item_id>",
                                           "</item_id>", "A1", "B22", "7")}
    assert ids == {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "<item_id>": 8,
                   "</item_id>": 9, "A1": 10, "B22": 11, "7": 12}
    assert tok.encode(render_completion("B22")) == [8, 11, 9]
    assert tok.encode("<history> A1 zzz 7 </history>") == [4, 10, 1, 12, 5]
    assert tok.eos_id == 3 and tok.pad_id == 0 and tok.vocab_size == 13
    prompt = tok.apply_chat_template([{"role": "user", "content": "<candidates> 7 A1 </candidates>"}])
    assert tok.encode(prompt) == [2, 6, 12, 10, 7]
    from abpo_jax.data.prompts import parse_completion
    assert parse_completion(tok.decode([8, 11, 9]), ["A1", "B22"]).candidate_index == 1
    with pytest.raises(ValueError, match="duplicate"):
        item_tokenizer(["A1", "A1"])
    with pytest.raises(ValueError, match="spaces"):
        item_tokenizer(["A 1"])


def test_from_hf_dir_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = item_tokenizer(["x", "y"])
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "[EOS]", "pad_token": "[PAD]", "bos_token": "[BOS]",
         "chat_template": template}))
    ours = Tokenizer.from_hf_dir(tmp_path)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"),
                                               eos_token="[EOS]", pad_token="[PAD]")
    ref.chat_template = template
    text = "<item_id> x y q </item_id>"
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
    assert (ours.eos_id, ours.pad_id, ours.bos_id) == (3, 0, 2)
    assert ours.apply_chat_template(MESSAGES) == ref.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True)
    (tmp_path / "tokenizer_config.json").write_text("{bad json")
    with pytest.raises(ValueError, match="tokenizer_config.json:1"):
        Tokenizer.from_hf_dir(tmp_path)
