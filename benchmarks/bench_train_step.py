"""The jitted item-mode ABPO step (full and LoRA) against the same step written the PyTorch way.

    abpo-jax bench --config.bench.only=train_step
    abpo-jax bench --quick          # tiny random Llama, CI-sized (~1 min on 2 CPU cores)

Work per step: B prompts of P tokens, each with C candidate completions of L tokens, G rollouts
(the demo's sizes on SmolLM2-135M: B=4, P=256, C=8, L=12, G=4). Ours scores the C completions
of a prompt in one shared-prefix packed pass (B x (P + C L) tokens); each step runs one forward
whose values are pi_old (ppo_epochs = 1: `jax.vjp`), the pi_ref pass when beta != 0, and the
backward, then clipping + AdamW.

Peer ("torch"): the step as a user would write it with `transformers` + torch (test-only
dependency, imported here only): the same weights loaded into `LlamaForCausalLM`; every
candidate scored as its own prompt + completion sequence (B C sequences of P + L tokens), a
no-grad pi_old (and pi_ref) pass, then forward, backward, global-norm clipping and
`torch.optim.AdamW`. The loss head is the package's own objective on the peer's [B, C] log pi~
(`policy_objective`, evaluated with jax at the peer's values; its gradient w.r.t. log pi~ is fed
to `logp.backward`), so both sides minimise literally the same loss and the row checks that the
two first-step losses agree to float tolerance (`loss_abs_diff`). The head is [B, C]-sized:
its cost is nothing next to the model passes. Reported: groups (prompts) per second and
ours / peer.

FLOPs (written to the JSON as `step_flops`, `useful_flops`, `flop_fraction`): N = parameters
outside the token embedding and LM head, d = hidden size, V = vocabulary,

    F_fwd = 2 N B (P + C L)  +  2 d V B C L        (LM head on completion rows only)
    step  = F_fwd x (1 [pi_ref, if beta != 0] + 3 [forward + backward])
    useful = step: with ppo_epochs = 1 the pi_old values are the gradient forward's own (the
    peer, written the usual way, spends one more F_fwd on a separate no-grad pi_old pass)

The "two-pass (before)" rows (`--config.bench.train_two_pass`, on in configs/bench.py) run
the step as it was before the single-pass change (`make_policy_step(single_pass=False)`: a
separate no-grad pi_old pass, one more F_fwd counted in all passes but not in useful), so
before and after come from one run on one machine.

The "bf16-matmul" rows (`--config.bench.train_bf16_matmul`, on in configs/bench.py) run the
step with `model.matmul_precision=bfloat16` (weight matmuls and attention products on bfloat16
operands with float32 accumulation, forward and backward) and `model.remat=True,
remat_policy=dots_with_no_batch_dims_saveable` (`FAST`; the row's `model_settings`); their
`flop_fraction` is against the peak of that matmul measured in the same run
(`flop_fraction_of_f32_peak` against the float32 one), and their peer runs the torch model under `torch.autocast("cpu", torch.bfloat16)` (its loss differs from ours
by bf16 rounding, not float tolerance).

(LoRA: the backward skips the weight gradients, so its forward + backward counts 2, not 3.)
Attention score FLOPs are not counted. `flop_fraction` = useful / step_s / peak, with `peak`
the row's matmul FLOP/s measured in the same run (best of 5 [2048 x 2048] @ [2048 x 2048]).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.bench import model_label


@dataclasses.dataclass(frozen=True)
class Sizes:
    B: int = 4
    P: int = 256
    C: int = 8
    L: int = 12
    G: int = 4


FULL, QUICK = Sizes(), Sizes(B=2, P=32, C=4, L=6, G=4)
# The "bf16-matmul" rows' model settings: bf16 operands with float32 accumulation, and per-layer
# remat that keeps only the weight matmuls' outputs (the scan then stacks far fewer residuals).
FAST = {"matmul_precision": "bfloat16", "remat": True,
        "remat_policy": "dots_with_no_batch_dims_saveable"}


def _options(config) -> dict:
    bench = config.get("bench", {}) if hasattr(config, "get") else {}
    quick = bool(bench.get("quick", False))
    return {"quick": quick, "steps": int(bench.get("train_steps", 1 if quick else 2)),
            "peer": bool(bench.get("train_peer", True)),
            "peer_steps": int(bench.get("train_peer_steps", 1)),
            "two_pass": bool(bench.get("train_two_pass", False)),
            "bf16": bool(bench.get("train_bf16_matmul", False)),
            "sizes": dict(bench.get("train_sizes", {}) or {})}


def _tokens(s: Sizes, vocab: int, seed: int = 0):
    """Random prompts (P - 8 real tokens) and completions `[1, item..., 2, 3]` of L tokens."""
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(100 % vocab, vocab, size=s.P - 8)) for _ in range(s.B)]
    comps = [[[1, *rng.integers(4, vocab, size=s.L - 3).tolist(), 2, 3] for _ in range(s.C)]
             for _ in range(s.B)]
    return prompts, comps


def _batch(s: Sizes, prompts, comps):
    from abpo_jax.sampling.group_scoring import pack_candidates
    from abpo_jax.train.learner import RLBatch
    rng = np.random.default_rng(1)
    cands = pack_candidates(prompts, comps, prompt_len=s.P, completion_len=s.L,
                            num_candidates=s.C)
    fields = dict(cands=cands, exposed=rng.integers(0, s.C, s.B).astype(np.int32),
                  propensity=np.full(s.B, 1.0 / s.C, np.float32),
                  outcome=(rng.random(s.B) < 0.5).astype(np.int32),
                  target=np.zeros(s.B, np.int32), sim_reward=np.zeros((s.B, s.C), np.float32),
                  valid=np.ones(s.B, np.float32))
    # per-row fields added to RLBatch later (e.g. round_certainty) default to zeros [B]
    for f in dataclasses.fields(RLBatch):
        fields.setdefault(f.name, np.zeros(s.B, np.float32))
    batch = RLBatch(**fields)
    return jax.tree.map(lambda x: np.asarray(x)[None], batch)


def matmul_peak(n: int = 2048, repeats: int = 5, precision: str = "float32") -> float:
    """Best matmul FLOP/s of this backend over `repeats` timed [n, n] @ [n, n]: float32, or
    (`precision="bfloat16"`) bfloat16 operands accumulated in float32, as the model's
    `matmul_precision=bfloat16` runs them."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    if precision == "bfloat16":
        a = a.astype(jnp.bfloat16)
        f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    else:
        f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(mc, s: Sizes, beta: float, lora: bool, two_pass: bool = False
               ) -> tuple[float, float]:
    """(all FLOPs, useful FLOPs) of one step by the module docstring's formula (`two_pass`:
    the separate pi_old pass is run, and counted in "all" but not in "useful")."""
    fwd = mc.forward_flops(s.B * (s.P + s.C * s.L), s.B * s.C * s.L)
    train = 2 if lora else 3
    useful = fwd * ((1 if beta != 0 else 0) + train)   # single pass: no separate pi_old
    return float(useful + (fwd if two_pass else 0)), float(useful)


def _model(config, quick: bool, mesh):
    """`config.model.source` (SmolLM2 by default; or the --quick tiny Llama) with
    `config.model`'s compute settings (dtype, layer scan, remat, attention), as a run builds it."""
    from abpo_jax.train.experiment import load_configured_model, model_overrides
    overrides = model_overrides(config.model)
    if not quick:
        return load_configured_model(config.model, mesh)
    from abpo_jax.models.config import ModelConfig
    from abpo_jax.models.decoder import create_sharded_model
    mc = ModelConfig.tiny(512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=128, **overrides)
    return create_sharded_model(mc, mesh), mc


def _settings(config, s: Sizes):
    from abpo_jax.losses.abpo import LossSettings
    config.loss.num_generations = s.G
    # batch certainty: the benchmark's batch carries no round quantiles
    return LossSettings.from_config(config.loss).replace(certainty_norm="batch")


def _ours(config, s: Sizes, lora_rank: int, steps: int, quick: bool,
          two_pass: bool = False, precision: str = "float32") -> dict:
    from flax import nnx

    from abpo_jax.models import lora
    from abpo_jax.models.loaders import hf_state_dict
    from abpo_jax.train import state as st
    from abpo_jax.train.learner import init_step_state, make_policy_step

    config.model.lora.rank = lora_rank
    saved = {k: config.model[k] for k in FAST}
    if precision == "bfloat16":
        config.model.update(FAST)
    settings = _settings(config, s)
    mesh = st.build_mesh(config)
    t_load = time.perf_counter()
    model, mc = _model(config, quick, mesh)
    if lora_rank:
        lora.apply_lora(model, lora_rank, 16.0, ("q_proj", "v_proj"), rngs=nnx.Rngs(0),
                        mesh=mesh)
    # the peer's starting weights, read before the donated step consumes the arrays
    weights = None if lora_rank else hf_state_dict(model)
    split, params, frozen = st.place_model(model, config, mesh)
    tx = st.make_optimizer(config, 1e-4, 100)
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    ref = jax.tree.map(jnp.copy, params)
    fn = jax.jit(make_policy_step(split, tx, settings, single_pass=not two_pass),
                 donate_argnums=0)
    prompts, comps = _tokens(s, mc.vocab_size)
    batch = _batch(s, prompts, comps)
    key = jax.random.key(0)
    load_s = time.perf_counter() - t_load
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        # compiled apart from the first execution (which also first-touches the step's buffers)
        fn = fn.lower(state, frozen, ref, batch, key).compile()
        compile_s = time.perf_counter() - t0
        state, m = fn(state, frozen, ref, batch, key)
        first_loss = float(m["loss"])
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = fn(state, frozen, ref, batch, key)
        jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / steps
    total, useful = step_flops(mc, s, settings.beta, bool(lora_rank), two_pass)
    config.model.update(saved)
    return {"weights": weights, "mc": mc, "step_s": step_s, "first_s": first_s, "load_s": load_s,
            "compile_s": compile_s,
            "loss": first_loss, "flops": total, "useful": useful, "settings": settings,
            "prompts": prompts, "comps": comps, "batch": batch, "key": key,
            "trainable": st.count_params(params)}


def _peer(config, s: Sizes, res: dict, steps: int, bf16: bool = False) -> dict:
    """The torch step (module docstring); returns step time and its first-step loss. `bf16`:
    the model passes under `torch.autocast("cpu", torch.bfloat16)` (the peer of ours with
    `matmul_precision=bfloat16`)."""
    import contextlib

    import torch

    from abpo_jax.losses.abpo import CertaintyStats
    from abpo_jax.models.hf_twin import hf_causal_lm
    from abpo_jax.train.learner import policy_objective

    torch.manual_seed(0)
    hf = hf_causal_lm(res["mc"], res["weights"]).train()
    ref_model = copy.deepcopy(hf).eval()
    c = config.train
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=float(c.weight_decay))
    settings, batch = res["settings"], res["batch"]
    item_mask = torch.from_numpy(np.asarray(batch.cands.item_mask[0]))  # [B, C, L]
    seqs = torch.tensor([p + o for p, cs in zip(res["prompts"], res["comps"]) for o in cs])
    p_len = len(res["prompts"][0])
    completion = seqs[:, p_len:]                                          # [B C, L]

    def score(model):
        """log pi~ [B, C] and the item-span self-certainty [B, C], one sequence per candidate."""
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            logits = model(input_ids=seqs).logits
        logits = logits[:, p_len - 1:-1].float()   # predicts the completion
        logp_tok = torch.log_softmax(logits, -1).gather(-1, completion[..., None])[..., 0]
        seq_logp = logp_tok.sum(-1).view(s.B, s.C)
        sc = (torch.logsumexp(logits, -1) - logits.mean(-1)).view(s.B, s.C, s.L)
        cert = (sc * item_mask).sum(-1) / item_mask.sum(-1).clamp(min=1.0)
        return torch.log_softmax(seq_logp, -1), cert.detach()

    @jax.jit
    def head(logp, old_logp, ref_logp, cert, key):
        objective = policy_objective(settings, batch, old_logp, ref_logp, cert,
                                     CertaintyStats.init(), key)
        return objective.micro_loss(logp[0], 0)[0]

    head_grad = jax.jit(jax.value_and_grad(head))

    def step(i: int) -> float:
        with torch.no_grad():
            old_logp, cert = score(hf)
            ref_logp = score(ref_model)[0] if settings.beta != 0 else old_logp
        logp, _ = score(hf)
        as_np = lambda t: t.detach().numpy()[None]  # noqa: E731  [1, B, C]
        loss, g = head_grad(as_np(logp), as_np(old_logp), as_np(ref_logp), as_np(cert),
                            jax.random.fold_in(res["key"], i))
        logp.backward(torch.from_numpy(np.array(g)[0]))
        torch.nn.utils.clip_grad_norm_(hf.parameters(), float(c.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    first_loss = step(0)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    return {"step_s": (time.perf_counter() - t0) / steps, "loss": first_loss}


def run(config) -> list[dict]:
    """A row per variant (LoRA r8, full; optionally two-pass and bf16-matmul ones); the full
    rows carry the torch peer at the same precision, and FLOPs."""
    opts = _options(config)
    # bench.train_sizes (e.g. {"B": 32}): an accelerator's realistic batch (launch/device_check.sh)
    s = QUICK if opts["quick"] else dataclasses.replace(FULL, **opts["sizes"])
    # the matmul peak is re-measured after every variant and the run's best is used: on a
    # shared CPU one measurement can come out far below what the step itself reaches
    peaks = {"float32": matmul_peak()}
    name = "tiny" if opts["quick"] else model_label(config)
    rows = []
    variants = [(8, False, "float32"), (0, False, "float32")]
    if opts["two_pass"]:
        variants += [(8, True, "float32"), (0, True, "float32")]
    if opts["bf16"]:
        peaks["bfloat16"] = matmul_peak(precision="bfloat16")
        variants += [(8, False, "bfloat16"), (0, False, "bfloat16")]
    for rank, two_pass, precision in variants:
        res = _ours(config, s, rank, opts["steps"], opts["quick"], two_pass, precision)
        for p in peaks:
            peaks[p] = max(peaks[p], matmul_peak(precision=p))
        tokens = s.B * (s.P + s.C * s.L)
        label = (("lora r8" if rank else "full") + (" two-pass (before)" if two_pass else "")
                 + (" bf16-matmul" if precision == "bfloat16" else ""))
        model_settings = ({k: config.model[k] for k in FAST} if precision == "float32"
                          else dict(FAST))
        to_first = res["load_s"] + res["compile_s"]
        row = {
            "benchmark": f"train_step {name} {label}",
            "metric": "groups/s", "ours": s.B / res["step_s"], "peer": None,
            "peer_name": None, "ratio": None, "matmul_precision": precision,
            "model_settings": model_settings,
            "step_s": res["step_s"], "tokens_per_s": tokens / res["step_s"],
            "first_step_s": res["first_s"], "load_s": res["load_s"],
            "compile_s": res["compile_s"],
            # model load + compile (or compile-cache load): the wait before the first step runs
            "to_first_step_s": to_first,
            "step_flops": res["flops"], "useful_flops": res["useful"],
            "loss": res["loss"], "sizes": dataclasses.asdict(s),
            "notes": (f"{res['step_s']:.3g} s/step, {tokens / res['step_s']:.0f} packed tok/s, "
                      f"first call incl. compile {res['first_s']:.3g} s, load + compile "
                      f"{to_first:.3g} s, {{flops}}; {res['trainable']:,} trainable"),
        }
        if rank == 0 and not two_pass and opts["peer"]:
            bf16 = precision == "bfloat16"
            peer = _peer(config, s, res, opts["peer_steps"], bf16=bf16)
            row.update(peer=s.B / peer["step_s"],
                       peer_name="transformers+torch (per-sequence" + (
                           ", autocast bf16)" if bf16 else ")"),
                       ratio=peer["step_s"] / res["step_s"], peer_step_s=peer["step_s"],
                       peer_loss=peer["loss"], loss_abs_diff=abs(peer["loss"] - res["loss"]))
            row["notes"] += (f"; peer {peer['step_s']:.3g} s/step, loss ours {res['loss']:.6g} "
                             f"vs peer {peer['loss']:.6g}")
        rows.append(row)
    for row in rows:   # against the run's best peaks
        peak = peaks[row["matmul_precision"]]
        achieved = row["useful_flops"] / row["step_s"]
        row.update(matmul_peak=peak, matmul_peak_f32=peaks["float32"],
                   flop_fraction=achieved / peak,
                   flop_fraction_all_passes=row["step_flops"] / row["step_s"] / peak,
                   flop_fraction_of_f32_peak=achieved / peaks["float32"])
        row["notes"] = row["notes"].replace("{flops}", (
            f"useful {achieved / peak:.0%} of {peak / 1e9:.0f} GFLOP/s "
            f"({row['matmul_precision']} matmul peak)"))
    return rows


if __name__ == "__main__":
    from abpo_jax.config import base_config

    for r in run(base_config()):
        print(r)
