"""The vectorised request packer builds exactly what `pack_candidates` builds."""
import jax
import numpy as np
import pytest

from abpo_jax.sampling.group_scoring import item_span_mask, pack_candidates
from abpo_jax.train.packing import ItemCompletions, item_span, pack_requests


def _random_completions(rng, b, c, l):
    """Rows of C completions sharing a random prefix and suffix, middles of random length
    (sometimes equal at the edges, so the shared span is longer than the tag)."""
    out = []
    for _ in range(b):
        pre = list(rng.integers(1, 4, size=int(rng.integers(0, 3))))
        suf = list(rng.integers(1, 4, size=int(rng.integers(0, 3))))
        rows = []
        for _ in range(c):
            mid = list(rng.integers(1, 6, size=int(rng.integers(1, l - len(pre) - len(suf) + 1))))
            rows.append([int(x) for x in pre + mid + suf])
        out.append(rows)
    return out


@pytest.mark.parametrize("c", [1, 2, 5])
def test_item_span_matches_the_reference(c):
    rng = np.random.default_rng(c)
    comps = _random_completions(rng, 200, c, 8)
    padded = np.zeros((200, c, 8), np.int32)
    lens = np.zeros((200, c), np.int32)
    for b, row in enumerate(comps):
        for j, o in enumerate(row):
            padded[b, j, :len(o)], lens[b, j] = o, len(o)
    np.testing.assert_array_equal(item_span(padded, lens), item_span_mask(comps, c, 8))


def test_pack_requests_matches_pack_candidates():
    rng = np.random.default_rng(0)
    num_items, b, c, p = 30, 16, 6, 12

    class Tok:                      # a token per character: completions of several lengths
        eos_id = 99

        def encode(self, text):
            return [ord(ch) % 97 for ch in text]

    short_ids = [str(i * 37 % 1000) for i in range(num_items)]
    table = ItemCompletions.build(Tok(), short_ids)
    l = int(table.lengths.max()) + 2
    cands = np.stack([rng.choice(num_items, c, replace=False) for _ in range(b)])
    prompts = [list(rng.integers(1, 50, size=int(rng.integers(1, p + 1)))) for _ in range(b)]
    ours = pack_requests(prompts, cands, table, prompt_len=p, completion_len=l, pad_id=0)
    ref = pack_candidates(prompts, [[list(table.tokens[i, :table.lengths[i]]) for i in row]
                                    for row in cands], prompt_len=p, completion_len=l,
                          num_candidates=c, pad_id=0)
    for name in ("tokens", "positions", "segments", "prompt_lengths", "completion_tokens",
                 "completion_mask"):
        np.testing.assert_array_equal(getattr(ours.packed, name), getattr(ref.packed, name),
                                      err_msg=name)
    np.testing.assert_array_equal(ours.item_mask, ref.item_mask)
    np.testing.assert_array_equal(ours.valid, ref.valid)
    with pytest.raises(ValueError, match="limit"):
        pack_requests(prompts, cands, table, prompt_len=p, completion_len=2)


def test_encoder_fast_path_equals_the_per_request_path():
    """`Encoder.encode` (one tokenization per item + the vectorised packer) gives the arrays of
    the per-request path, for the item-token tokenizer of the tiny decoder."""
    from abpo_jax.data.splits import Example
    from abpo_jax.models.tokenizer import load_tokenizer
    from abpo_jax.train.policy import Encoder

    rng = np.random.default_rng(1)
    short_ids = [str(i) for i in range(40)]
    tok = load_tokenizer("tiny", "", short_ids)
    examples = [Example(user=u, history=rng.choice(40, int(rng.integers(0, 5)), replace=False),
                        history_ratings=np.zeros(0, np.float32), target=0,
                        candidates=rng.choice(40, 6, replace=False).astype(np.int32),
                        target_index=0) for u in range(12)]
    enc = Encoder(tok, [f"t{i}" for i in range(40)], short_ids, "ids_only", False).fit(examples)
    fast = enc.encode(examples)
    assert enc.item_completions is not None
    ref = pack_candidates([enc.prompt_ids(e) for e in examples],
                          [enc.completion_ids(e) for e in examples],
                          prompt_len=enc.prompt_len, completion_len=enc.completion_len,
                          num_candidates=enc.num_candidates, pad_id=int(tok.pad_id or 0))
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
