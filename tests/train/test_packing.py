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
    # event rounds: the completion length of the catalogue's longest completion, no room added
    roomy = enc.completion_len
    enc.fit(examples, exact=True)
    assert enc.completion_len == 4 < roomy == 8          # <item_id> ID </item_id> eos
    np.testing.assert_array_equal(enc.encode(examples).packed.completion_tokens,
                                  ref.packed.completion_tokens[:, :, :4])


def test_batch_featurizer_and_pipeline_equal_the_per_record_ones(tmp_path):
    """`ItemMode.featurize_batch` = the stacked per-record `featurize`, and the grain pipeline
    yields the same batches with either (same order, same arrays)."""
    import types

    from abpo_jax.data import events as ev, log_store, splits as sp
    from abpo_jax.data.pipeline import log_iterator
    from abpo_jax.models.tokenizer import load_tokenizer
    from abpo_jax.sim.logging_policy import log_round, uniform_policy
    from abpo_jax.sim.replay import ReplayFeedback
    from abpo_jax.train.modes.item import ItemMode
    from abpo_jax.train.policy import Encoder
    from tests.data.test_events import synthetic

    inter = synthetic(num_users=6, per_user=(20, 30))
    seqs = sp.user_sequences(inter)
    index = ev.EventIndex.build(seqs, inter.num_items)
    req = ev.build_requests(index, np.flatnonzero(index.position >= 1)[:40], history_len=3,
                            num_candidates=5, seed=0)
    log_round(req.examples(), uniform_policy(), ReplayFeedback(seqs, inter.num_items),
              round_index=1, seed=0, logs_dir=str(tmp_path), policy_revision="t",
              per_event=True)
    roundlog = log_store.open_round(log_store.round_path(tmp_path, 1))
    short = sp.item_short_ids(inter)
    enc = Encoder(load_tokenizer("tiny", "", short), inter.item_titles, short, "ids_only",
                  False).fit(req.examples())
    mode = ItemMode(types.SimpleNamespace(encoder=enc), None, 1)
    recs = list(roundlog)[:7]
    batch = mode.featurize_batch(recs)
    for key, value in batch.items():
        np.testing.assert_array_equal(value, np.stack([mode.featurize(r)[key] for r in recs]),
                                      err_msg=key)
    shards = [str(p) for p in roundlog.shard_paths]
    common = dict(batch_size=8, seed=3, process_index=0, process_count=1, num_epochs=2,
                  featurize=mode.featurize)
    count = 0
    for a, b in zip(log_iterator(shards, **common),
                    log_iterator(shards, featurize_batch=mode.featurize_batch, **common)):
        count += 1
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert count == 10                       # 40 records x 2 epochs / 8


def test_shared_rows_score_like_every_row_apart():
    """The compact layout (the completions' common prefix once per prompt, no last columns)
    with the head applied once per prompt to the rows every candidate shares (`shared_rows`:
    the common prefix + 1) gives the scores and gradients of the program that scores every
    (candidate, token) row apart. Completions of several lengths (char tokens)."""
    from flax import nnx

    from abpo_jax.models.config import ModelConfig
    from abpo_jax.models.decoder import Decoder
    from abpo_jax.sampling.group_scoring import score_candidates

    class Tok:
        eos_id = 99

        def encode(self, text):
            return [ord(ch) % 97 for ch in text]

    rng = np.random.default_rng(1)
    table = ItemCompletions.build(Tok(), [str(i * 37 % 1000) for i in range(30)])
    shared = table.common_prefix() + 1
    assert shared == len("<item_id>") + 1   # the tag's characters, then the id's first
    cands = np.stack([rng.choice(30, 5, replace=False) for _ in range(4)])
    prompts = [list(rng.integers(1, 50, size=int(rng.integers(1, 9)))) for _ in range(4)]
    batch = pack_requests(prompts, cands, table, prompt_len=8,
                          completion_len=int(table.lengths.max()), pad_id=0)
    model = Decoder(ModelConfig.tiny(100), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def scores(p, rows):
        return score_candidates(nnx.merge(graphdef, p), batch, "completion", rows)

    def objective(p, rows):
        logp, seq, cert = scores(p, rows)
        return (logp * np.arange(5)).sum() + 0.1 * seq.sum() + 0.01 * cert.sum()

    # The same values up to float rounding: the head's matmul and logsumexp reduce over
    # differently shaped arrays, so results may differ in the last bits (float32 eps ~1e-7
    # relative; scores are O(10)).
    for a, b in zip(scores(params, 0), scores(params, shared)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # Gradient entries are sums of many terms of both signs: compared at the leaf's scale.
    g0, g1 = jax.grad(objective)(params, 0), jax.grad(objective)(params, shared)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
