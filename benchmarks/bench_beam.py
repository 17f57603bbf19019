"""Constrained beam search over the whole catalogue: ours (`sampling.beam`) vs HF `generate`.

    abpo-jax bench --config.bench.only=beam   # SmolLM2-135M, ML-1M titles (3,706 items), K=10
    abpo-jax bench --config.bench.only=beam --config.model.source=gemma3_270m
    abpo-jax bench --quick                    # tiny random Llama, 300-item random catalogue

Catalogue-mode evaluation (ReRe / MiniOneRec): for each prompt the K best items of the whole
catalogue by constrained beam search. Both sides get the same weights (our Decoder's copied into
its transformers twin, `models.hf_twin`), the same left-padded batch of prompts, the same K and the same catalogue
trie: ours on device (`build_catalogue_trie`, an edge list), HF through
`prefix_allowed_tokens_fn` over a prefix -> allowed-tokens table, the way MiniOneRec's
`evaluate.py` builds its `hash_dict`, with its generation settings (`num_beams=K`,
`num_return_sequences=K`, `do_sample=False`, `length_penalty=0.0`). Full size: the first B
MovieLens-1M test users' history-only prompts (`render_messages(candidates=False)`), items as
quoted titles (`bench.beam_item_text=id` for id tags).

Metric: wall seconds per prompt (prefill included), ours after a warm-up call (its compile time
is its own row); `ratio` = peer / ours (> 1: ours is faster). `items_agree`: share of prompts
whose K items come back in the same order on both sides; `item_sets_agree`: same K items in any
order; `max_score_diff`: largest |our score - HF `sequences_scores`| over agreeing prompts.
`ours_cpu_s` / `peer_cpu_s`: process CPU seconds per prompt (all threads; steadier than wall time
on a shared machine), `cpu_ratio` their ratio, `*_load` the 1-minute load average after each.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from abpo_jax.bench import model_label

QUICK = {"num_prompts": 4, "prompt_len": 24, "num_items": 300, "vocab": 256, "beams": 10}


def _option(config: Any, name: str, default: Any) -> Any:
    bench = config.get("bench", {}) if hasattr(config, "get") else {}
    return bench.get(name, default) if bench else default


def prefix_table(sequences: list[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """Completion prefix -> tokens that continue it into some item (MiniOneRec's hash_dict)."""
    table: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for t in range(len(seq)):
            table.setdefault(tuple(seq[:t]), set()).add(int(seq[t]))
    return {k: sorted(v) for k, v in table.items()}


def _quick_case(config: Any):
    """Tiny random Llama, random prompts, a random catalogue of 2-6 token items + eos."""
    from abpo_jax.bench import tiny_case

    q = QUICK
    model, prompts, seqs, eos, pad = tiny_case(q["num_prompts"], q["prompt_len"],
                                               q["num_items"], q["vocab"])
    return model, prompts, seqs, eos, pad, q["beams"], "tiny random llama, random catalogue"


def _full_case(config: Any):
    """`config.model.source` (SmolLM2 by default) on the first B MovieLens-1M test users,
    whole-catalogue prompts."""
    from abpo_jax.data.catalogue import catalogue_completion_ids, catalogue_titles
    from abpo_jax.data.prompts import render_messages
    from abpo_jax.data.splits import build_examples, prepare_data
    from abpo_jax.train.policy import load_pretrained

    b = int(_option(config, "beam_num_prompts", 4))
    item_text = str(_option(config, "beam_item_text", "title"))
    model, tok = load_pretrained(config)
    prep = prepare_data(config)
    inter = prep.interactions
    examples = build_examples(prep.split, prep.slices.test[:b], "test",
                              history_len=config.data.history_len,
                              num_candidates=config.data.num_candidates,
                              num_items=inter.num_items, seed=config.seed)
    titles = catalogue_titles(inter.item_titles)
    prompts = [tok.encode(tok.apply_chat_template(render_messages(
        e, titles, prep.short_ids, show_ratings=config.data.show_ratings, candidates=False,
        item_text=item_text))) for e in examples]
    seqs = catalogue_completion_ids(tok, inter.item_titles, prep.short_ids, item_text)
    k = int(_option(config, "beam_width", config.eval.beam))
    what = f"{model_label(config)}, {inter.name} {inter.num_items} items as {item_text}s"
    return model, prompts, seqs, tok.eos_id, tok.pad_id or 0, k, what


def _hf_peer(model, tokens, mask, seqs, eos, pad, k, n_new, our_items, our_scores) -> dict:
    """HF generate's beam search on the same weights, prompts and trie: its seconds and how
    its items and scores compare with ours."""
    import torch

    from abpo_jax.models.hf_twin import hf_twin

    b, p_len = tokens.shape
    hf = hf_twin(model)
    table = prefix_table(seqs)

    def allowed(batch_id: int, input_ids: Any) -> list[int]:
        return table.get(tuple(input_ids[p_len:].tolist()), [eos])  # off-trie beams may only end

    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        gen = hf.generate(torch.tensor(tokens, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long), num_beams=k,
                          num_return_sequences=k, do_sample=False, length_penalty=0.0,
                          max_new_tokens=n_new, prefix_allowed_tokens_fn=allowed,
                          pad_token_id=pad, eos_token_id=eos, return_dict_in_generate=True,
                          output_scores=True, top_k=None, top_p=None, temperature=None)
    hf_s, hf_cpu = time.perf_counter() - start, time.process_time() - cpu
    index = {tuple(s): i for i, s in enumerate(seqs)}
    hf_items = []
    for row in gen.sequences[:, p_len:].tolist():
        end = row.index(eos) + 1 if eos in row else len(row)
        hf_items.append(index.get(tuple(row[:end]), -1))
    hf_items = np.array(hf_items).reshape(b, k)
    hf_scores = gen.sequences_scores.numpy().reshape(b, k)
    same = np.all(our_items == hf_items, axis=1)
    same_set = np.array([set(x) == set(y) for x, y in zip(our_items, hf_items)])
    score_diff = float(np.abs(our_scores - hf_scores)[same].max()) if same.any() else None
    return {"seconds": hf_s, "cpu_seconds": hf_cpu, "load": os.getloadavg()[0],
            "items_agree": float(same.mean()),
            "item_sets_agree": float(same_set.mean()), "max_score_diff": score_diff}


def run(config: Any) -> list[dict]:
    from abpo_jax.sampling.beam import BeamParams, beam_search
    from abpo_jax.sampling.generate import left_pad
    from abpo_jax.sampling.group_scoring import bucket
    from abpo_jax.sampling.trie import build_catalogue_trie

    quick = bool(_option(config, "quick", False))
    model, prompts, seqs, eos, pad, k, what = (_quick_case if quick else _full_case)(config)
    b = len(prompts)
    p_len = bucket(max(map(len, prompts)), 16)
    tokens, mask = left_pad(prompts, p_len, pad)
    n_new = max(map(len, seqs))
    trie = build_catalogue_trie(seqs, vocab_size=model.config.vocab_size)
    params = BeamParams(num_beams=k, max_new_tokens=n_new, length_penalty=0.0)

    def ours():
        return jax.block_until_ready(beam_search(model, tokens, mask, trie, params, eos))

    start = time.perf_counter()
    ours()
    first = time.perf_counter() - start
    ours_s = ours_cpu = float("inf")
    for _ in range(2):
        start, cpu = time.perf_counter(), time.process_time()
        out = ours()
        ours_s = min(ours_s, time.perf_counter() - start)
        ours_cpu = min(ours_cpu, time.process_time() - cpu)
    ours_load = os.getloadavg()[0]
    our_items, our_scores = np.asarray(out.items), np.asarray(out.scores)

    peer = _hf_peer(model, tokens, mask, seqs, eos, pad, k, n_new, our_items, our_scores) \
        if _option(config, "beam_peer", True) else None
    # prefill B P (head on the last slot) + at most n_new decode steps of B K beams
    steps = int(np.asarray(out.lengths).max())
    model_flops = (model.config.forward_flops(b * p_len, b)
                   + model.config.forward_flops(b * k * steps, b * k * steps))
    shape = (f"{what}; B={b} prompts ({p_len} tok), K={k}, <= {n_new} new tok, "
             f"trie {trie.num_nodes} nodes / {trie.nbytes / 2**20:.2f} MiB")
    row = {"benchmark": f"catalogue_beam_search{' tiny' if quick else ''}", "metric": "s/prompt",
           "ours": ours_s / b, "peer": None, "peer_name": None, "ratio": None,
           "valid_items": float(np.mean(our_items >= 0)),
           "model_flops": model_flops, "model_flops_per_s": model_flops / ours_s,
           "ours_cpu_s": ours_cpu / b, "ours_load": ours_load,
           "notes": f"{shape}; HF peer off (bench.beam_peer)"}
    if peer is not None:
        row.update(peer=peer["seconds"] / b,
                   peer_name="hf generate (num_beams, prefix_allowed_tokens_fn)",
                   ratio=peer["seconds"] / ours_s, items_agree=peer["items_agree"],
                   item_sets_agree=peer["item_sets_agree"],
                   max_score_diff=peer["max_score_diff"], peer_cpu_s=peer["cpu_seconds"] / b,
                   peer_load=peer["load"], cpu_ratio=peer["cpu_seconds"] / ours_cpu,
                   notes=f"{shape}; ratio = peer / ours; items agree {peer['items_agree']:.0%}; "
                         f"process CPU s/prompt ours {ours_cpu / b:.3g} (load "
                         f"{ours_load:.1f}), peer {peer['cpu_seconds'] / b:.3g} (load "
                         f"{peer['load']:.1f})")
    return [
        row,
        {"benchmark": f"catalogue_beam_search_compile{' tiny' if quick else ''}", "metric": "s",
         "ours": first - ours_s, "peer": None, "peer_name": None, "ratio": None,
         "notes": "first call minus steady-state call (jit compile, once per shape)"},
    ]


if __name__ == "__main__":
    from abpo_jax.config import base_config

    for row in run(base_config()):
        print(row)
