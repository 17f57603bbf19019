"""One text-mode GRPO step end to end (sample G completions per prompt, score, update): ours vs
TRL's `GRPOTrainer`.

    abpo-jax bench --config.bench.only=text_step            # SmolLM2-135M (a few minutes on CPU)
    abpo-jax bench --config.bench.only=text_step --config.model.source=gemma3_270m
    abpo-jax bench --quick --config.bench.only=text_step    # tiny random Llama (~30 s, 2 CPU cores)

`abpo-jax bench --quick` runs it at the quick size (as every benchmark; tests/test_bench_runner.py).

Same work on both sides, in one process, on the same weights (our Decoder's, copied into its
transformers twin, `models.hf_twin`), the same B prompts of P token
ids, G completions per prompt, at most L new tokens each, temperature 1, and the same reward:

    R(o) = fraction of o's tokens with an even token id      (no model, a few microseconds)

Ours: `sampling.procedure.sample_completions` (one prefill + one KV-cache decode loop, each
prompt's C candidate completions as its trie: every sample is one of them) -> R on the host ->
the jitted, state-donating `make_text_policy_step` with anchor off and tempering one (= GRPO):
one shared-prefix packed forward of prompt + M = G+1 completion blocks (member 0, the logged
completion, is scored but outside the loss), whose values are pi_old, the backward, clipping,
AdamW. TRL (trl 1.16.0): `trainer.train()` for 1 + `text_steps` optimizer steps, each its own
`_generate_and_score_completions` (HF `generate`, R, advantages), `_compute_loss` + backward,
gradient clipping, AdamW; a callback times each step from `on_step_begin` to `on_step_end`.
The first step on each side (our compiles) is a warm-up and not timed; each side reports its
best timed step (`step_s`; all of them in `all_step_s`), as the CPUs may be shared, with its
process CPU seconds (`step_cpu_s`, `sample_cpu_s`; `peer_cpu_s`) and the load average after it.

Matched settings: float32 (TRL `bf16=False`), beta = 0 (TRL's default; no reference pass on
either side), loss dapo = our token_mean, scale_rewards "group" = our std "bessel", epsilon
0.2, AdamW lr 1e-4 without weight decay, constant schedule, global-norm clip 1.0.

What differs, and how it is handled: our sampler is constrained by the trie and TRL's
generation is not. The candidates are L tokens long (L - 1 random ids + eos), so every one of
our samples has exactly L tokens; TRL gets `max_completion_length = L` and generates L tokens
unless it samples eos earlier. Both sides count the completion tokens they generated per step
(`gen_tokens`, `peer_gen_tokens`), and tokens/s is reported next to groups/s. Constraining costs
us a masked softmax per decode step; TRL's per-token work is a plain sampler. The rewards, and so
the advantages, differ (different samples), but the work per step does not depend on them.

First-step losses (`loss`, `peer_loss`) are reported but are no parity check: at ratio 1 with
beta 0 both are -sum_i A_i n_i / sum_i n_i, which is 0 (float noise) whenever every completion
has the same length n_i = L. Parity on identical inputs is tests/train/test_text_trl_parity.py.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.bench import model_label


@dataclasses.dataclass(frozen=True)
class Sizes:
    B: int = 4      # prompts per step
    P: int = 128    # prompt tokens
    G: int = 4      # completions per prompt
    L: int = 8      # new tokens per completion (eos included)
    C: int = 8      # candidate completions per prompt (our trie)


FULL, QUICK = Sizes(), Sizes(B=2, P=32, G=4, L=6, C=6)


def _options(config) -> dict:
    bench = config.get("bench", {}) if hasattr(config, "get") else {}
    quick = bool(bench.get("quick", False))
    return {"quick": quick, "steps": int(bench.get("text_steps", 2)),
            "peer": bool(bench.get("text_peer", True)),
            "sizes": dict(bench.get("text_sizes", {}) or {})}


def even_token_reward(completions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """R [...] = fraction of the real completion tokens [..., L] with an even id."""
    even = ((completions % 2) == 0) & mask
    return even.sum(-1) / np.maximum(mask.sum(-1), 1)


def _model(config, quick: bool, mesh) -> tuple:
    """`config.model.source` (SmolLM2 by default), or the --quick tiny random Llama."""
    from abpo_jax.train.experiment import load_configured_model
    if not quick:
        return load_configured_model(config.model, mesh)
    from abpo_jax.models.config import ModelConfig
    from abpo_jax.models.decoder import create_sharded_model
    mc = ModelConfig.tiny(512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=128, eos_token_id=2, pad_token_id=2)
    return create_sharded_model(mc, mesh), mc


def _tokens(s: Sizes, vocab: int, eos: int, seed: int = 0):
    """Prompt ids [B][P] and candidates [B][C][L] (L - 1 ids + eos, distinct), no eos inside."""
    rng = np.random.default_rng(seed)
    low = max(eos, 2) + 1   # keep bos/eos/pad out of the random ids
    prompts = [rng.integers(low, vocab, s.P).tolist() for _ in range(s.B)]
    cands = [[rng.integers(low, vocab, s.L - 1).tolist() + [eos] for _ in range(s.C)]
             for _ in range(s.B)]
    return prompts, cands


def _settings(config, s: Sizes) -> "LossSettings":
    from abpo_jax.losses.abpo import LossSettings
    config.loss.num_generations = s.G
    return LossSettings.from_config(config.loss).replace(
        anchor="off", tempering="one", rewards=("simulator",), std="bessel", beta=0.0,
        epsilon_low=0.2, epsilon_high=0.2, aggregation="token_mean", certainty_norm="batch",
        max_completion_length=s.L)


def _ours(config, s: Sizes, steps: int, quick: bool) -> dict:
    from abpo_jax.models.loaders import hf_state_dict
    from abpo_jax.sampling import procedure as proc
    from abpo_jax.sampling.generate import left_pad
    from abpo_jax.sampling.trie import build_batch_trie
    from abpo_jax.train import state as st
    from abpo_jax.train.learner import init_step_state
    from abpo_jax.train.text_learner import TextBatch, make_text_policy_step

    config.train.optimizer, config.train.weight_decay = "adamw", 0.0
    config.train.schedule, config.train.warmup_steps, config.train.grad_clip = "constant", 0, 1.0
    settings = _settings(config, s)
    mesh = st.build_mesh(config)
    t_load = time.perf_counter()
    model, mc = _model(config, quick, mesh)
    weights = hf_state_dict(model)   # the peer's copy, read before the donated step runs
    split, params, frozen = st.place_model(model, config, mesh)
    tx = st.make_optimizer(config, 1e-4, 100)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    procedure = proc.Procedure(temperature=1.0, max_item_tokens=s.L)
    eos = mc.eos_ids[0]
    step_fn = jax.jit(make_text_policy_step(split, tx, settings, procedure, eos),
                      donate_argnums=0)
    prompts, cands = _tokens(s, mc.vocab_size, eos)
    ptok, pmask = left_pad(prompts, s.P)
    trie = jax.tree.map(jnp.asarray, build_batch_trie(cands))
    ptok_d, pmask_d = jnp.asarray(ptok), jnp.asarray(pmask)
    anchor = np.asarray([c[0] for c in cands], np.int32)[:, None]   # [B, 1, L] "logged"
    fixed = dict(propensity=np.full(s.B, 1.0 / s.C, np.float32), outcome=np.zeros(s.B, np.int32),
                 target=np.full(s.B, -1, np.int32), round_certainty=np.zeros(s.B, np.float32),
                 valid=np.ones(s.B, np.float32))
    ref = jax.tree.map(jnp.copy, params)   # unused at beta = 0 (the step skips the pass)
    load_s = time.perf_counter() - t_load

    def one_step(state: dict, i: int) -> tuple[dict, dict]:
        """Sample from the current params (pi_old), reward, update; returns host numbers."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        samples = proc.sample_completions(split.merge(state["params"], frozen), ptok_d,
                                          pmask_d, jax.random.key(i), procedure, s.G, eos, trie)
        tokens, kinds = np.asarray(samples.tokens), np.asarray(samples.kinds)
        t1, cpu1 = time.perf_counter(), time.process_time()
        real = kinds != proc.KIND_PAD
        all_tokens = np.concatenate([anchor, tokens], 1)
        all_kinds = np.concatenate([np.full((s.B, 1, s.L), proc.KIND_ITEM, np.int32), kinds], 1)
        batch = TextBatch(
            prompt_tokens=ptok_d, prompt_mask=pmask_d, tokens=all_tokens, kinds=all_kinds,
            members=np.concatenate([np.zeros((s.B, 1), np.int32),
                                    np.asarray(samples.candidate)], 1),
            format_reward=np.ones((s.B, s.G + 1), np.float32),
            sim_reward=even_token_reward(all_tokens, all_kinds != proc.KIND_PAD
                                         ).astype(np.float32),
            trie=trie, **fixed)
        state, metrics = step_fn(state, frozen, ref, batch)
        loss = float(metrics["loss"])    # blocks until the update is done
        t2 = time.perf_counter()
        return state, {"step_s": t2 - t0, "sample_s": t1 - t0, "update_s": t2 - t1,
                       "step_cpu_s": time.process_time() - cpu0, "sample_cpu_s": cpu1 - cpu0,
                       "load": os.getloadavg()[0],
                       "loss": loss, "gen_tokens": int(real.sum()),
                       "reward": float(even_token_reward(tokens, real).mean())}

    with jax.set_mesh(mesh):
        state, first = one_step(state, 0)
        timed = []
        for i in range(steps):
            state, r = one_step(state, i + 1)
            timed.append(r)
    best = min(timed, key=lambda r: r["step_s"])   # best of: the CPUs may be shared
    return {"weights": weights, "mc": mc, "prompts": prompts, "first": first, "load_s": load_s,
            "all_step_s": [r["step_s"] for r in timed], **best}


def _word_tokenizer(vocab: int, eos: int) -> "PreTrainedTokenizerFast":
    """A whitespace word-level tokenizer whose word "t{i}" is token id i (eos: "<eos>", also the
    pad token), so text prompts reach TRL as exactly our prompt ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab) if i != eos} | {"<eos>": eos}
    backend = Tokenizer(models.WordLevel(words, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                   pad_token="<eos>")


def _peer(s: Sizes, res: dict, steps: int) -> dict:
    """TRL GRPOTrainer.train() for 1 + `steps` steps; per-step times of the timed ones."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from abpo_jax.models.hf_twin import hf_causal_lm

    mc = res["mc"]
    torch.manual_seed(0)
    # eos: the first of the model's stop tokens (ours and TRL's), as HF generate would stop on
    # any of a list
    hf = hf_causal_lm(mc, res["weights"], eos_token_id=mc.eos_ids[0]).train()
    tok = _word_tokenizer(mc.vocab_size, mc.eos_ids[0])
    texts = [" ".join(f"t{i}" for i in p) for p in res["prompts"]]
    assert [tok(t)["input_ids"] for t in texts] == res["prompts"], "prompt ids differ"

    def reward(completions: list, completion_ids: list, **_) -> list[float]:
        ids = [np.asarray(c) for c in completion_ids]
        return [float(even_token_reward(c, np.ones(len(c), bool))) for c in ids]

    class StepTimer(transformers.TrainerCallback):
        def __init__(self):
            self.begin, self.seconds, self.cpu, self.cpu_seconds = 0.0, [], 0.0, []

        def on_step_begin(self, args, state, control, **kw):
            self.begin, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.begin)
            self.cpu_seconds.append(time.process_time() - self.cpu)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, report_to="none", use_cpu=jax.default_backend() == "cpu",
            bf16=False, per_device_train_batch_size=s.B * s.G, num_generations=s.G,
            max_completion_length=s.L, temperature=1.0, beta=0.0, loss_type="dapo",
            scale_rewards="group", epsilon=0.2, learning_rate=1e-4, weight_decay=0.0,
            lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=1 + steps,
            save_strategy="no", logging_strategy="steps", logging_steps=1, disable_tqdm=True,
            seed=0)
        trainer = GRPOTrainer(model=hf, args=args, processing_class=tok, reward_funcs=reward,
                              train_dataset=Dataset.from_dict({"prompt": texts}),
                              callbacks=[timer])
        generate = trainer._generate_single_turn
        gen_seconds: list[float] = []

        def timed_generate(*a, **k):   # the HF generate share of each step
            t0 = time.perf_counter()
            out = generate(*a, **k)
            gen_seconds.append(time.perf_counter() - t0)
            return out

        trainer._generate_single_turn = timed_generate
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]   # one per step
    best = 1 + int(np.argmin(timer.seconds[1:]))   # best timed step, as ours
    return {"step_s": timer.seconds[best], "all_step_s": timer.seconds[1:],
            "cpu_s": timer.cpu_seconds[best], "load": os.getloadavg()[0],
            "first_step_s": timer.seconds[0], "generate_s": gen_seconds[best],
            "loss": float(logs[0]["loss"]), "reward": float(logs[best]["reward"]),
            "gen_tokens": logs[best]["completions/mean_length"] * s.B * s.G,
            "name": f"trl {trl.__version__} GRPOTrainer (HF generate)"}


def run(config) -> list[dict]:
    """One row: groups (prompts) per second of a whole step, ours vs TRL."""
    opts = _options(config)
    # bench.text_sizes (e.g. {"B": 32}): an accelerator's realistic batch (device_check.sh)
    s = QUICK if opts["quick"] else dataclasses.replace(FULL, **opts["sizes"])
    res = _ours(config, s, opts["steps"], opts["quick"])
    mc = res["mc"]
    # sampling: prefill B P (head on the last slot) + G L decoded tokens per prompt; update:
    # the packed prompt + (G + 1) completion blocks, forward + backward (x3), head on those
    model_flops = (mc.forward_flops(s.B * s.P, s.B) + mc.forward_flops(s.B * s.G * s.L,
                                                                      s.B * s.G * s.L)
                   + 3 * mc.forward_flops(s.B * (s.P + (s.G + 1) * s.L),
                                          s.B * (s.G + 1) * s.L))
    name = "tiny" if opts["quick"] else model_label(config)
    row = {
        "benchmark": f"text_step {name}", "metric": "groups/s", "ours": s.B / res["step_s"],
        "peer": None, "peer_name": None, "ratio": None,
        "step_s": res["step_s"], "sample_s": res["sample_s"], "update_s": res["update_s"],
        "step_cpu_s": res["step_cpu_s"], "sample_cpu_s": res["sample_cpu_s"], "load": res["load"],
        "all_step_s": res["all_step_s"], "first_step_s": res["first"]["step_s"],
        "load_s": res["load_s"],
        "gen_tokens": res["gen_tokens"], "tokens_per_s": res["gen_tokens"] / res["step_s"],
        "loss": res["first"]["loss"], "reward": res["reward"], "sizes": dataclasses.asdict(s),
        "model_flops": model_flops, "model_flops_per_s": model_flops / res["step_s"],
        "notes": (f"ours {res['step_s']:.3g} s/step (sample {res['sample_s']:.3g} + update "
                  f"{res['update_s']:.3g}), {res['gen_tokens']:.0f} gen tok/step, first step "
                  f"incl. compile {res['first']['step_s']:.3g} s"),
    }
    if opts["peer"]:
        try:
            peer = _peer(s, res, opts["steps"])
        except ImportError as err:   # torch / trl are test-only extras
            row["notes"] += f"; TRL peer unavailable: {err}"
            return [row]
        row.update(peer=s.B / peer["step_s"], peer_name=peer["name"],
                   ratio=peer["step_s"] / res["step_s"], peer_step_s=peer["step_s"],
                   peer_cpu_s=peer["cpu_s"], peer_load=peer["load"],
                   peer_all_step_s=peer["all_step_s"],
                   peer_generate_s=peer["generate_s"], peer_first_step_s=peer["first_step_s"],
                   peer_gen_tokens=peer["gen_tokens"],
                   peer_tokens_per_s=peer["gen_tokens"] / peer["step_s"],
                   peer_loss=peer["loss"], peer_reward=peer["reward"])
        row["notes"] += (f"; TRL {peer['step_s']:.3g} s/step (generate "
                         f"{peer['generate_s']:.3g}), {peer['gen_tokens']:.0f} gen tok/step; "
                         f"first-step loss ours {res['first']['loss']:.3g} vs TRL "
                         f"{peer['loss']:.3g} (both -sum A n / N: 0 at equal lengths)")
    return [row]


if __name__ == "__main__":
    from abpo_jax.config import base_config

    for r in run(base_config()):
        print(r)
