"""Train-step time and tokens/s of the jitted ABPO step on SmolLM2-135M (LoRA and full) at the
demo's sizes (B=4 prompts of ~256 tokens, C=8 candidates, G=4).

    abpo-jax bench --config.bench.only=train_step
    python benchmarks/bench_train_step.py

Tokens/s counts the packed tokens the step scores (B x (P + C*L)) per step; each step runs the
pi_old/pi_ref pre-passes and one forward+backward over them. No peer: there is no reference
implementation of the ABPO step to race.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

B, P, C, L = 4, 256, 8, 12


def _batch(vocab: int, seed: int = 0):
    from abpo_jax.sampling.group_scoring import pack_candidates
    from abpo_jax.train.learner import RLBatch
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(100, vocab, size=P - 8)) for _ in range(B)]
    comps = [[[1, *rng.integers(100, vocab, size=L - 4).tolist(), 2, 3] for _ in range(C)]
             for _ in range(B)]
    cands = pack_candidates(prompts, comps, prompt_len=P, completion_len=L, num_candidates=C)
    batch = RLBatch(cands=cands, exposed=rng.integers(0, C, B).astype(np.int32),
                    propensity=np.full(B, 1.0 / C, np.float32),
                    outcome=(rng.random(B) < 0.5).astype(np.int32),
                    target=np.zeros(B, np.int32), sim_reward=np.zeros((B, C), np.float32),
                    valid=np.ones(B, np.float32))
    return jax.tree.map(lambda x: np.asarray(x)[None], batch)


def _time_step(config, lora_rank: int, steps: int) -> dict:
    from flax import nnx

    from abpo_jax.losses.settings import LossSettings
    from abpo_jax.models import lora
    from abpo_jax.models.loaders import load_smollm2
    from abpo_jax.train import state as st
    from abpo_jax.train.learner import init_step_state, make_policy_step

    config.model.lora.rank = lora_rank
    config.loss.num_generations = 4
    mesh = st.build_mesh(config)
    model, mc = load_smollm2(mesh=mesh)
    if lora_rank:
        lora.apply_lora(model, lora_rank, 16.0, ("q_proj", "v_proj"), rngs=nnx.Rngs(0),
                        mesh=mesh)
    split, params, frozen = st.place_model(model, config, mesh)
    tx = st.make_optimizer(config, 1e-4, 100)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    ref = jax.tree.map(jnp.copy, params)
    fn = jax.jit(make_policy_step(split, tx, LossSettings.from_mapping(config.loss)),
                 donate_argnums=0)
    batch = _batch(mc.vocab_size)
    key = jax.random.key(0)
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        state, m = fn(state, frozen, ref, batch, key)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = fn(state, frozen, ref, batch, key)
        jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / steps
    tokens = B * (P + C * L)
    name = f"lora r{lora_rank}" if lora_rank else "full"
    return {"benchmark": f"train_step smollm2 {name}", "metric": "tokens/s",
            "ours": tokens / step_s, "peer": None, "peer_name": None, "ratio": None,
            "notes": f"{step_s:.2f} s/step (first call incl. compile {compile_s:.0f} s), "
                     f"B={B} P={P} C={C} L={L} G=4, {st.count_params(params):,} trainable"}


def run(config) -> list[dict]:
    """Rows for LoRA (rank 8) and full fine-tuning; 2 timed steps each after a warm-up."""
    steps = int(config.get("bench", {}).get("train_steps", 2)) if hasattr(config, "get") else 2
    return [_time_step(config, 8, steps), _time_step(config, 0, steps)]


if __name__ == "__main__":
    from abpo_jax.config import base_config

    for row in run(base_config()):
        print(row)
