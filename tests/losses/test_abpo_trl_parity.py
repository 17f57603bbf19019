"""Parity of our GRPO loss (anchor off) with TRL's `GRPOTrainer._compute_loss` (trl 1.16.0).

TRL runs its own code path: a GRPOTrainer around a tiny random LlamaForCausalLM (saved to a temp
dir, offline), fed prompt/completion ids + masks, advantages and old/ref per-token log-probs. Our
loss gets the per-token log-probs TRL's model produces for the same ids. Values, gradients with
respect to the per-token log-probs, and the KL / clip metrics must agree for every TRL loss type
our aggregations cover.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from abpo_jax.config import base_config  # noqa: E402
from abpo_jax.losses.abpo import LossSettings, group_advantages, policy_loss  # noqa: E402


def _settings(**changes) -> LossSettings:
    return LossSettings.from_config(base_config().loss).replace(**changes)

TRL_VERSION = "1.16.0"  # the version these conventions were checked against
B, G, P, T = 2, 4, 3, 5
MAX_COMPLETION = 6      # > T so dr_grpo's constant differs from the token count
# TRL loss type -> our aggregation
AGGREGATIONS = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean",
                "dr_grpo": "constant"}


def build_trl_trainer(workdir: str, *, batch_size: int, num_generations: int,
                      max_completion_length: int, **grpo_config):
    """A TRL GRPOTrainer around a tiny random LlamaForCausalLM (vocab 32), offline.

    Also used by `benchmarks/bench_losses.py` as the TRL peer.
    """
    import os

    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    vocab = {f"t{i}": i for i in range(30)} | {"<pad>": 30, "<eos>": 31}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=30, eos_token_id=31,
        bos_token_id=None))
    # a path, not the module: TRL builds its reference model from the path when beta != 0
    path = os.path.join(workdir, "tiny_llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    args = GRPOConfig(output_dir=os.path.join(workdir, "trl_out"), report_to="none",
                      use_cpu=True, per_device_train_batch_size=batch_size,
                      num_generations=num_generations,
                      max_completion_length=max_completion_length, save_strategy="no",
                      logging_strategy="no", **grpo_config)
    tr = GRPOTrainer(model=path, args=args, processing_class=tok,
                     reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                     train_dataset=Dataset.from_dict({"prompt": ["t1 t2", "t3 t4"]}))
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we do not run
    return tr


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    assert trl.__version__ == TRL_VERSION, f"parity recorded for trl {TRL_VERSION}, found {trl.__version__}"
    return build_trl_trainer(str(tmp_path_factory.mktemp("trl")), batch_size=B * G,
                             num_generations=G, max_completion_length=MAX_COMPLETION, beta=0.04,
                             epsilon=0.2, epsilon_high=0.28, use_bias_correction_kl=False)


@pytest.fixture(scope="module")
def batch(trainer):
    """TRL inputs for B*G completions of varying length, plus the model's per-token log-probs."""
    rng = np.random.default_rng(0)
    n = B * G
    prompt_ids = torch.tensor(rng.integers(0, 30, (n, P)))
    prompt_mask = torch.ones(n, P, dtype=torch.long)
    prompt_mask[0, 0] = 0  # one left-padded prompt
    completion_ids = torch.tensor(rng.integers(0, 30, (n, T)))
    lengths = np.array([5, 3, 1, 4, 5, 2, 5, 1])
    completion_mask = torch.tensor((np.arange(T)[None] < lengths[:, None]).astype(np.int64))
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1), T)
    # old/ref log-probs off by up to ±0.5 so some ratios leave [1 - 0.2, 1 + 0.28] (clipping).
    old = logps + torch.tensor(rng.uniform(-0.5, 0.5, (n, T)), dtype=logps.dtype)
    ref = logps + torch.tensor(rng.uniform(-0.5, 0.5, (n, T)), dtype=logps.dtype)
    rewards = torch.tensor(rng.integers(0, 3, n).astype(np.float32))
    # TRL's own group advantages: (r - group mean) / (nanstd + 1e-4) (scale_rewards="group").
    from trl.trainer.utils import nanstd
    grouped = rewards.view(B, G)
    trl_adv = ((grouped - grouped.mean(1, keepdim=True))
               / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)).reshape(-1)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
              "completion_ids": completion_ids, "completion_mask": completion_mask,
              "advantages": trl_adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": completion_mask.sum()}
    return inputs, logps, rewards


def _ours(settings, logps, inputs):
    """Our GRPO loss value and d loss / d logp, on [B, G, T]."""
    shape = (B, G, T)
    as_jnp = lambda t: jnp.asarray(t.detach().numpy().astype(np.float32)).reshape(shape)  # noqa: E731
    mask = as_jnp(inputs["completion_mask"].float())
    adv = jnp.asarray(inputs["advantages"].numpy()).reshape(B, G)

    def loss(lp):
        return policy_loss(settings, logp=lp, old_logp=as_jnp(inputs["old_per_token_logps"]),
                           ref_logp=as_jnp(inputs["ref_per_token_logps"]), mask=mask,
                           advantages=adv)
    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(as_jnp(logps))
    return float(value), np.asarray(grad).reshape(B * G, T), metrics


def trl_loss_and_grad(trainer, inputs, logps):
    """TRL's loss and its gradient w.r.t. the per-token log-probs (its model forward replaced by
    the leaf tensor holding the log-probs that forward returned)."""
    leaf = logps.detach().clone().requires_grad_(True)
    original = trainer._get_per_token_logps_and_entropies
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, torch.zeros_like(leaf), None)
    try:
        trainer._metrics["train"].clear()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
    finally:
        trainer._get_per_token_logps_and_entropies = original
    return float(loss.detach()), leaf.grad.numpy(), dict(trainer._metrics["train"])


@pytest.mark.parametrize("loss_type", list(AGGREGATIONS))
@pytest.mark.parametrize("estimator_correction", [False, True])
def test_grpo_loss_matches_trl(trainer, batch, loss_type, estimator_correction):
    inputs, logps, _ = batch
    trainer.loss_type = loss_type
    trainer.args.use_bias_correction_kl = estimator_correction
    trl_value, trl_grad, trl_metrics = trl_loss_and_grad(trainer, inputs, logps)
    settings = _settings(anchor="off", beta=0.04, kl_estimator="k3", epsilon_low=0.2,
                            epsilon_high=0.28, aggregation=AGGREGATIONS[loss_type],
                            max_completion_length=MAX_COMPLETION,
                            kl_ratio_correction=estimator_correction)
    value, grad, metrics = _ours(settings, logps, inputs)
    np.testing.assert_allclose(value, trl_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, trl_grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(metrics["kl"]), trl_metrics["kl"][-1], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["clip_fraction"]),
                               trl_metrics["clip_ratio/region_mean"][-1], rtol=1e-6)
    assert 0 < float(metrics["clip_fraction"]) < 1  # the batch exercises clipping


def test_trl_model_forward_path(trainer, batch):
    """Unpatched: TRL computing log-probs with its model gives the loss we get from those log-probs."""
    inputs, logps, _ = batch
    trainer.loss_type = "bnpo"
    trainer.args.use_bias_correction_kl = False
    with torch.no_grad():
        trl_value = float(trainer._compute_loss(trainer.model, inputs))
    settings = _settings(anchor="off", beta=0.04, kl_estimator="k3", epsilon_low=0.2,
                         epsilon_high=0.28, aggregation="token_mean", kl_ratio_correction=False)
    value, _, _ = _ours(settings, logps, inputs)
    np.testing.assert_allclose(value, trl_value, rtol=1e-5, atol=1e-6)


def test_advantages_match_trl_conventions(batch):
    """TRL scale_rewards="group" = our std="bessel"; scale_rewards="none" = our std="none"."""
    inputs, _, rewards = batch
    grouped = jnp.asarray(rewards.numpy()).reshape(B, G)
    ours = group_advantages(grouped, std="bessel", eps=1e-4)
    np.testing.assert_allclose(np.asarray(ours).reshape(-1), inputs["advantages"].numpy(), rtol=1e-5,
                               atol=1e-6)
    centred = rewards.view(B, G) - rewards.view(B, G).mean(1, keepdim=True)
    np.testing.assert_allclose(np.asarray(group_advantages(grouped, std="none", eps=1e-4)),
                               centred.numpy(), rtol=1e-6, atol=1e-7)
