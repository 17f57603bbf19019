"""ABPO / GRPO loss + gradient throughput vs TRL's `GRPOTrainer._compute_loss` (CPU, f32).

    python benchmarks/bench_losses.py           # ~1 min on a 2-core CPU
    abpo-jax bench --config.bench.only=losses

Work: the loss and its gradient w.r.t. the per-token log-probs of B prompts x G rollouts x T
tokens (the model forward is excluded on both sides: TRL's log-prob helper is replaced by a leaf
tensor, as in `tests/losses/test_abpo_trl_parity.py`). Ours is jitted (compile excluded by a warm-up
call); TRL runs eagerly in torch, as it does in training. A second row times the full ABPO
objective (anchor terms, SNIPS, certainty) with no peer, a third the self-certainty reduction over
a SmolLM2-sized vocabulary.
"""

from __future__ import annotations

import importlib.util
import pathlib
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.losses.abpo import (LossSettings, anchor_terms, group_advantages, item_mode_loss,
                                  policy_loss, token_self_certainty)

DEFAULTS = {"num_prompts": 16, "num_generations": 8, "completion_len": 64, "anchor_len": 8,
            "vocab": 49152, "certainty_tokens": 256, "repeats": 5}
QUICK = {"num_prompts": 4, "num_generations": 4, "completion_len": 16, "anchor_len": 4,
         "vocab": 4096, "certainty_tokens": 64, "repeats": 1}   # bench --quick: the code path
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up / compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _inputs(b: int, g: int, t: int, ta: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    logp = -rng.uniform(0.05, 4.0, (b, g, t)).astype(np.float32)
    lengths = rng.integers(1, t + 1, (b, g, 1))
    return {
        "logp": logp, "mask": (np.arange(t) < lengths).astype(np.float32),
        "old_logp": logp + rng.uniform(-0.3, 0.3, logp.shape).astype(np.float32),
        "ref_logp": logp + rng.uniform(-0.3, 0.3, logp.shape).astype(np.float32),
        "rewards": rng.integers(0, 3, (b, g)).astype(np.float32),
        "anchor_logp": -rng.uniform(0.05, 4.0, (b, ta)).astype(np.float32),
        "outcome": rng.integers(0, 2, b), "sc": rng.uniform(0, 5, b).astype(np.float32),
        "target": rng.uniform(0.05, 1, b).astype(np.float32),
        "propensity": rng.uniform(0.05, 1, b).astype(np.float32),
    }


def _trl_peer(x: dict[str, np.ndarray], settings: LossSettings, repeats: int) -> tuple[float, str]:
    """Seconds per TRL loss+backward (loss_type dapo = our token_mean), or (nan, reason)."""
    try:
        import torch
        spec = importlib.util.spec_from_file_location(
            "trl_parity", ROOT / "tests" / "losses" / "test_abpo_trl_parity.py")
        parity = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(parity)
    except Exception as err:  # torch / trl are test-only extras
        return float("nan"), f"TRL peer unavailable: {err}"
    b, g, t = x["logp"].shape
    with tempfile.TemporaryDirectory() as tmp:
        trainer = parity.build_trl_trainer(
            tmp, batch_size=b * g, num_generations=g, max_completion_length=t,
            beta=settings.beta, epsilon=settings.epsilon_low, epsilon_high=settings.epsilon_high,
            use_bias_correction_kl=False, loss_type="dapo")
        mask = torch.tensor(x["mask"].reshape(b * g, t), dtype=torch.long)
        inputs = {"prompt_ids": torch.zeros(b * g, 1, dtype=torch.long),
                  "prompt_mask": torch.ones(b * g, 1, dtype=torch.long),
                  "completion_ids": torch.zeros(b * g, t, dtype=torch.long),
                  "completion_mask": mask, "num_items_in_batch": mask.sum(),
                  "advantages": torch.tensor(np.asarray(
                      jax.device_get(_group_adv(x["rewards"]))).reshape(-1)),
                  "old_per_token_logps": torch.tensor(x["old_logp"].reshape(b * g, t)),
                  "ref_per_token_logps": torch.tensor(x["ref_logp"].reshape(b * g, t))}
        logps = torch.tensor(x["logp"].reshape(b * g, t))
        seconds = _best_seconds(lambda: parity.trl_loss_and_grad(trainer, inputs, logps), repeats)
    return seconds, f"trl {parity.TRL_VERSION} loss_type=dapo, eager torch CPU"


def _group_adv(rewards: np.ndarray) -> jax.Array:
    """TRL's default advantages (scale_rewards=group: Bessel std, eps 1e-4)."""
    return group_advantages(jnp.asarray(rewards), std="bessel", eps=1e-4)


def run(config: Any) -> list[dict]:
    bench_cfg = dict(config.get("bench", {}).get("losses", {})) if "bench" in config else {}
    from abpo_jax.bench import is_quick
    p = {**DEFAULTS, **(QUICK if is_quick(config) else bench_cfg)}
    b, g, t, ta = p["num_prompts"], p["num_generations"], p["completion_len"], p["anchor_len"]
    x = _inputs(b, g, t, ta)
    settings = LossSettings.from_config(config.loss).replace(max_completion_length=t,
                                                             certainty_norm="batch")
    grpo = settings.replace(anchor="off")
    tokens = float(x["mask"].sum())
    adv = _group_adv(x["rewards"])
    j = {k: jnp.asarray(v) for k, v in x.items()}

    @jax.jit
    def grpo_grad(logp):
        return jax.value_and_grad(lambda lp: policy_loss(
            grpo, logp=lp, old_logp=j["old_logp"], ref_logp=j["ref_logp"], mask=j["mask"],
            advantages=adv)[0])(logp)

    # the item-mode objective end to end: B prompts, C = 2G candidates, G rollouts + anchor
    cands = 2 * g
    item_logp = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(1), (b, cands)))
    members = jax.random.randint(jax.random.PRNGKey(2), (b, g + 1), 0, cands)

    @jax.jit
    def abpo_grad(logp):
        terms = anchor_terms(settings, outcome=j["outcome"], self_certainty=j["sc"],
                             target_prob=j["target"], propensity=j["propensity"],
                             mask=jnp.ones(b))
        return jax.value_and_grad(lambda lp: item_mode_loss(
            settings, logp=lp, old_logp=logp, ref_logp=logp, members=members, terms=terms,
            valid=jnp.ones(b))[0])(logp)

    ours_grpo = _best_seconds(lambda: jax.block_until_ready(grpo_grad(j["logp"])), p["repeats"])
    peer, peer_note = _trl_peer(x, grpo, p["repeats"])
    ours_abpo = _best_seconds(lambda: jax.block_until_ready(abpo_grad(item_logp)), p["repeats"])

    v, n = p["vocab"], p["certainty_tokens"]
    logits = jax.random.normal(jax.random.PRNGKey(0), (n, v), jnp.float32)
    sc = jax.jit(token_self_certainty)
    ours_sc = _best_seconds(lambda: jax.block_until_ready(sc(logits)), p["repeats"])

    shape = f"B={b} G={g} T={t}"
    peer_tps = None if np.isnan(peer) else tokens / peer
    return [
        {"benchmark": "losses/grpo_loss_grad", "metric": "tokens/s", "ours": tokens / ours_grpo,
         "peer": peer_tps, "peer_name": "TRL _compute_loss+backward" if peer_tps else None,
         "ratio": (peer / ours_grpo) if peer_tps else None,
         "notes": f"{shape}, {tokens:.0f} valid tokens, token_mean, k3; {peer_note} "
                  "(TRL time includes its per-call metric logging)"},
        {"benchmark": "losses/abpo_item_objective_grad", "metric": "groups/s",
         "ours": b / ours_abpo, "peer": None, "peer_name": None, "ratio": None,
         "notes": f"B={b} G={g} C={cands}; anchor terms + SNIPS + member rewards + advantages "
                  "+ loss + grad (item mode)"},
        {"benchmark": "losses/self_certainty", "metric": "tokens/s", "ours": n / ours_sc,
         "peer": None, "peer_name": None, "ratio": None,
         "notes": f"{n} tokens x V={v} logits, logsumexp - mean, jit"},
    ]


if __name__ == "__main__":
    from abpo_jax.bench import format_table
    from abpo_jax.config import base_config

    print(format_table(run(base_config())))
