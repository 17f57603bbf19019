"""A weightless architecture directory (`save_hf_architecture`) and `model.random_init`: what the
accelerator check builds SmolLM2 / Gemma-3-270M from on a machine their weights cannot reach.
The reference is the packaged GGUF itself: its config, its tokenizer, its parameter shapes."""

import jax
import pytest
from flax import nnx

from abpo_jax.config import ConfigError, base_config, validate
from abpo_jax.models import architecture_dir, loaders
from abpo_jax.models.decoder import Decoder
from abpo_jax.models.tokenizer import Tokenizer, item_tokenizer, load_tokenizer


def _shapes(model) -> dict:
    return {tuple(map(str, k)): v.shape for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_smollm2_architecture_dir_matches_the_gguf(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = loaders.smollm2_gguf_path()
    want = loaders.ModelConfig(**loaders.gguf_fields(gguf.GGUFReader(path), path))
    d = architecture_dir.save_packaged_architecture("smollm2", tmp_path / "arch")
    assert not list(d.glob("*.safetensors"))   # weightless: megabytes, not the model
    assert loaders.read_hf_config(d) == want

    ours, back = load_tokenizer("smollm2"), Tokenizer.from_hf_dir(d)
    messages = [{"role": "user", "content": "Movies like Toy Story (1995)? <b>é</b>"}]
    prompt = ours.apply_chat_template(messages)
    assert back.apply_chat_template(messages) == prompt
    assert back.encode(prompt) == ours.encode(prompt)
    assert (back.eos_id, back.pad_id, back.bos_id, back.family) == (
        ours.eos_id, ours.pad_id, ours.bos_id, ours.family)

    model, config = loaders.load_model("hf", str(d), random_init=True)
    assert config == want
    reference = nnx.eval_shape(lambda: Decoder(want, rngs=nnx.Rngs(0)))
    assert _shapes(model) == _shapes(reference)
    assert all(bool(jax.numpy.isfinite(v).all()) for v in jax.tree.leaves(nnx.state(model)))


def test_template_less_tokenizer_keeps_its_chat_family(tmp_path):
    tok = item_tokenizer(["i1", "i2"])   # no chat template; family ids_only
    tok.save_hf_dir(tmp_path)
    back = Tokenizer.from_hf_dir(tmp_path)
    assert back.chat_template is None and back.family == tok.family == "ids_only"
    assert back.encode("i2 i1") == tok.encode("i2 i1")


def test_random_init_only_with_an_hf_directory():
    c = base_config()
    c.model.random_init = True
    with pytest.raises(ConfigError, match="model.random_init"):
        validate(c)
    with pytest.raises(ValueError, match="random_init"):
        loaders.load_model("smollm2", random_init=True)
