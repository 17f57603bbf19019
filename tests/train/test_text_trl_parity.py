"""The text-mode step (anchor off = GRPO) side by side with TRL's `GRPOTrainer` (trl 1.16.0).

Both sides hold the same weights: TRL's tiny random LlamaForCausalLM (`build_trl_trainer` of
tests/losses/test_abpo_trl_parity.py, saved to a temp dir) is loaded into our Decoder with
`load_hf_checkpoint`. Both see the same B prompts (left-padded, different lengths) and G
completions per prompt (different lengths, each ending in eos, right-padded):

  (a) per-token log-probs: our packed `member_scores` (prompt + the M = G+1 completion blocks
      in one pass) == TRL `_get_per_token_logps_and_entropies` (one prompt + completion row
      per completion, its fused LM head), for the policy and the reference weights;
  (b) loss and parameter gradients: our jitted `make_text_policy_step` (loss.anchor="off",
      tempering "one", rewards = the format source only, whose per-member values we set to
      TRL's rewards, std="bessel" = TRL scale_rewards="group", so both sides form the same
      advantages (r - mean) / (std + 1e-4); SGD with no clipping, so the gradient is
      (params - new params) / lr) == TRL `_compute_loss` + torch autograd on its model,
      for every TRL loss type our aggregations cover. pi_old = pi_theta on both sides (TRL
      without `old_per_token_logps` uses the detached forward, as our single-pass step does);
      pi_ref is a perturbed copy of the weights (TRL's `ref_model` gets them, ours the
      step's `ref_params`), so the k3 KL term is non-zero.

Both sides run float32: TRL's GRPOConfig defaults to bf16 autocast (on CPU too), whose
log-probs are ~4e-4 off the float32 ones, so the trainer is built with bf16=False. The anchor
(member 0, here a copy of each prompt's first completion) is scored by our packed pass but,
with the anchor off, is outside the loss; the rollouts' candidate trie only feeds the anchor's
(unused) SNIPS numerator.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from abpo_jax.config import base_config  # noqa: E402
from abpo_jax.losses.abpo import LossSettings  # noqa: E402
from abpo_jax.models.loaders import hf_state_dict, load_hf_checkpoint  # noqa: E402
from abpo_jax.sampling import procedure as proc  # noqa: E402
from abpo_jax.sampling.generate import left_pad  # noqa: E402
from abpo_jax.sampling.trie import build_batch_trie  # noqa: E402
from abpo_jax.train import state as st  # noqa: E402
from abpo_jax.train.learner import init_step_state  # noqa: E402
from abpo_jax.train.text_learner import (  # noqa: E402
    TextBatch, make_text_policy_step, member_scores)

B, G, N = 3, 4, 5                 # prompts, completions per prompt, completion slots
PROMPT_LENGTHS = (3, 5, 2)
LENGTHS = np.array([[5, 3, 1, 4], [2, 5, 4, 3], [1, 2, 5, 5]])   # completion lengths, eos incl.
MAX_COMPLETION = N + 2            # > N so dr_grpo's constant differs from the slot count
PAD, EOS = 30, 31                 # build_trl_trainer's tokenizer
LR = 1.0                          # SGD: gradient = (old - new) / LR; 1 keeps float32 rounding small
BETA, EPS_LOW, EPS_HIGH = 0.04, 0.2, 0.28


def _parity_module():
    """tests/losses/test_abpo_trl_parity.py, for `build_trl_trainer`, `AGGREGATIONS` and the
    trl version the conventions were recorded against (by path: tests/ is not a package)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "losses" / "test_abpo_trl_parity.py"
    spec = importlib.util.spec_from_file_location("trl_parity_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARITY = _parity_module()


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """(TRL trainer, our config/mesh/split/params/frozen, ref params) on one set of weights."""
    assert trl.__version__ == PARITY.TRL_VERSION
    workdir = tmp_path_factory.mktemp("trl_text")
    trainer = PARITY.build_trl_trainer(
        str(workdir), batch_size=B * G, num_generations=G, max_completion_length=MAX_COMPLETION,
        beta=BETA, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, use_bias_correction_kl=False,
        bf16=False)   # GRPOConfig defaults to bf16 autocast (on CPU too); ours is float32
    model, _ = load_hf_checkpoint(workdir / "tiny_llama")
    config = base_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    config.train.optimizer = "sgd"
    config.train.grad_clip = 1e9          # the update is -LR * grad exactly
    config.loss.num_generations = G
    mesh = st.build_mesh(config, jax.devices()[:1])
    split, params, frozen = st.place_model(model, config, mesh)
    # pi_ref: the weights plus noise of their own size, so the KL term is far from zero
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    ref = jax.tree.map(lambda p: p + jnp.std(p) * jax.random.normal(next(keys), p.shape)
                       if p.ndim > 1 else p * 1.5, params)
    trainer.ref_model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in
         hf_state_dict(split.merge(ref, frozen)).items()}, strict=True)
    return trainer, (config, mesh, split, params, frozen), ref


@pytest.fixture(scope="module")
def data():
    """Prompts, completions (ending in eos) and rewards; the TRL inputs and our TextBatch."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, PAD, n).tolist() for n in PROMPT_LENGTHS]
    comps = []
    for b in range(B):
        seen: set = set()
        row = []
        for g in range(G):   # distinct per prompt: they are the prompt's trie candidates
            while True:
                c = rng.integers(0, PAD, LENGTHS[b, g] - 1).tolist() + [EOS]
                if tuple(c) not in seen:
                    break
            seen.add(tuple(c))
            row.append(c)
        comps.append(row)
    rewards = rng.integers(0, 3, (B, G)).astype(np.float32)
    rewards[0] = [1, 0, 0, 1]          # ties and spread: the std path is exercised

    # TRL layout: row b * G + g; prompts left-padded with PAD, completions right-padded.
    ptok, pmask = left_pad(prompts, max(PROMPT_LENGTHS), pad_id=PAD)
    comp_ids = np.full((B, G, N), PAD, np.int64)
    for b in range(B):
        for g in range(G):
            comp_ids[b, g, :LENGTHS[b, g]] = comps[b][g]
    comp_mask = (np.arange(N)[None, None] < LENGTHS[..., None]).astype(np.int64)
    trl_inputs = {
        "prompt_ids": torch.tensor(np.repeat(ptok, G, 0), dtype=torch.long),
        "prompt_mask": torch.tensor(np.repeat(pmask, G, 0), dtype=torch.long),
        "completion_ids": torch.tensor(comp_ids.reshape(B * G, N)),
        "completion_mask": torch.tensor(comp_mask.reshape(B * G, N)),
        "num_items_in_batch": torch.tensor(int(comp_mask.sum())),
    }
    # TRL's group advantages (scale_rewards="group"): (r - mean) / (nanstd + 1e-4)
    from trl.trainer.utils import nanstd
    r = torch.tensor(rewards)
    trl_inputs["advantages"] = ((r - r.mean(1, keepdim=True))
                                / (nanstd(r, dim=1, keepdim=True) + 1e-4)).reshape(-1)

    # Ours: member 0 (the anchor) = a copy of completion 0; members 1..G the completions.
    tokens = np.concatenate([comp_ids[:, :1], comp_ids], axis=1).astype(np.int32)
    real = np.concatenate([comp_mask[:, :1], comp_mask], axis=1).astype(bool)
    tokens = np.where(real, tokens, 0)
    kinds = np.where(real, proc.KIND_ITEM, proc.KIND_PAD).astype(np.int32)
    members = np.concatenate([np.zeros((B, 1)), np.arange(G)[None].repeat(B, 0)], 1)
    fmt = np.concatenate([np.zeros((B, 1), np.float32), rewards], axis=1)
    batch = TextBatch(
        prompt_tokens=ptok, prompt_mask=pmask, tokens=tokens, kinds=kinds,
        members=members.astype(np.int32), format_reward=fmt,
        sim_reward=np.zeros((B, G + 1), np.float32),
        propensity=np.full(B, 0.25, np.float32), outcome=np.zeros(B, np.int32),
        target=np.full(B, -1, np.int32), round_certainty=np.zeros(B, np.float32),
        valid=np.ones(B, np.float32), trie=build_batch_trie(comps))
    return trl_inputs, batch


def _trl_logps(trainer, model, inputs) -> np.ndarray:
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), N)
    return logps.numpy()


def test_member_scores_equal_trl_per_token_logps(sides, data):
    trainer, (_, _, split, params, frozen), ref = sides
    trl_inputs, batch = data
    mask = trl_inputs["completion_mask"].numpy().reshape(B, G, N).astype(bool)
    score = jax.jit(lambda p: member_scores(split.merge(p, frozen), batch.prompt_tokens,
                                            batch.prompt_mask, batch.tokens, batch.kinds)[0])
    for ours_params, hf_model in ((params, trainer.model), (ref, trainer.ref_model)):
        ours = np.asarray(score(ours_params))
        want = _trl_logps(trainer, hf_model, trl_inputs).reshape(B, G, N)
        # float32 on both sides, different layouts (one packed sequence per prompt vs one row
        # per completion; TRL's positions count the left padding, ours do not: RoPE is
        # relative, so only rounding differs): observed <= 5e-7 on log-probs of ~-3.4.
        np.testing.assert_allclose(ours[:, 1:][mask], want[mask], rtol=0, atol=2e-5)
        np.testing.assert_allclose(ours[:, 0], ours[:, 1], rtol=0, atol=2e-5)  # the anchor copy
        assert np.all(ours[:, 1:][~mask] == 0.0)


_STEPS: dict = {}   # aggregation -> (optimizer, jitted step)


def _our_step(sides, batch, aggregation: str):
    """(loss, {HF name: gradient}, metrics) of one jitted text step (compiled once per
    aggregation: bnpo and dapo share token_mean)."""
    _, (config, mesh, split, params, frozen), ref = sides
    settings = LossSettings.from_config(config.loss).replace(
        anchor="off", tempering="one", rewards=("format",), std="bessel", eps=1e-4,
        beta=BETA, kl_estimator="k3", epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH,
        kl_ratio_correction=False, aggregation=aggregation,
        max_completion_length=MAX_COMPLETION, certainty_norm="batch",
        text_logprobs="model")   # TRL's convention: temperature-1 unconstrained log-probs
    if aggregation not in _STEPS:
        tx = st.make_optimizer(config, LR, 10)
        _STEPS[aggregation] = (tx, jax.jit(make_text_policy_step(
            split, tx, settings, proc.Procedure(temperature=1.0, max_item_tokens=N), EOS)))
    tx, step = _STEPS[aggregation]
    state = init_step_state(params, st.init_opt_state(tx, params, mesh))
    with jax.set_mesh(mesh):
        new_state, metrics = step(state, frozen, ref, jax.tree.map(jnp.asarray, batch))
    grads = jax.tree.map(lambda a, b: (a - b) / LR, params, new_state["params"])
    return float(metrics["loss"]), hf_state_dict(split.merge(grads, frozen)), metrics


def _trl_step(trainer, inputs, loss_type: str):
    """TRL's loss on its own model forward and torch autograd's parameter gradients."""
    trainer.loss_type = loss_type
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in trainer.model.named_parameters()}
    return float(loss.detach()), grads, dict(trainer._metrics["train"])


@pytest.mark.parametrize("loss_type", list(PARITY.AGGREGATIONS))
def test_text_step_equals_trl_loss_and_gradients(sides, data, loss_type):
    trainer = sides[0]
    trl_inputs, batch = data
    # as `_generate_and_score_completions` fills it: the ref model's no-grad log-probs
    trl_inputs = {**trl_inputs, "ref_per_token_logps": torch.tensor(
        _trl_logps(trainer, trainer.ref_model, trl_inputs))}
    trl_loss, trl_grads, trl_metrics = _trl_step(trainer, trl_inputs, loss_type)
    loss, grads, metrics = _our_step(sides, batch, PARITY.AGGREGATIONS[loss_type])
    # float32 forward + backward of different layouts (observed: ~1e-6 relative). The loss
    # is 3e-4..5e-3, part of it a sum of O(1) advantage terms that cancel (to exactly 0 for
    # grpo at ratio 1), hence the absolute 1e-7 (one float32 ulp of 1).
    np.testing.assert_allclose(loss, trl_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["kl"]), trl_metrics["kl"][-1], rtol=1e-5)
    assert set(grads) == set(trl_grads)
    scale = max(np.abs(g).max() for g in trl_grads.values())
    for name, want in trl_grads.items():
        # the SGD difference rounds at ~6e-8 |w| (|w| <= 1.5: norms), the two backwards at
        # ~1e-6 relative: observed max |diff| ~6e-8 against max |g| 0.07..0.25, so 1e-5 of
        # the largest entry is a >10x margin
        np.testing.assert_allclose(grads[name], want, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)
    # non-trivial: a KL of ~8e-3, gradients of ~0.1 (the comparison can fail)
    assert abs(trl_loss) > 1e-4 and trl_metrics["kl"][-1] > 1e-3 and scale > 1e-2
