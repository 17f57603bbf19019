"""load_tokenizer: one tokenizer choice per model source, shared by recommend and train."""

import pytest

from abpo_jax.models import tokenizer as tk
from abpo_jax.models.loaders import smollm2_gguf_path


def test_tiny_is_the_item_vocabulary():
    tok = tk.load_tokenizer("tiny", None, short_ids=["a1", "b2"])
    want = tk.item_tokenizer(["a1", "b2"])
    text = "<item_id>b2</item_id>"
    assert tok.encode(text) == want.encode(text)
    assert (tok.eos_id, tok.pad_id) == (3, 0)


def test_smollm2_and_gguf_read_the_same_file():
    a = tk.load_tokenizer("smollm2")
    b = tk.load_tokenizer("gguf", smollm2_gguf_path())
    text = "<item_id>4S8</item_id> The capital of France"
    assert a.encode(text) == b.encode(text) and len(a.encode(text)) > 3
    assert a.eos_id == b.eos_id


@pytest.mark.parametrize("source,path,short_ids,match", [
    ("tiny", None, None, "short_ids"), ("hf", None, None, "model.path"),
    ("gguf", "", None, "model.path"), ("llama", "x", None, "expected one of")])
def test_bad_source_or_missing_input(source, path, short_ids, match):
    with pytest.raises(ValueError, match=match):
        tk.load_tokenizer(source, path, short_ids)
