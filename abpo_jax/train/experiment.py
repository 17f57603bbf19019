"""Everything one continual experiment needs, built once from the config (no work done yet).

    mesh -> data (slices, examples) -> simulator -> tokenizer/encoder -> model + LoRA (born
    sharded) -> the action space (`train/modes/`: item | text, chosen here once) and the
    logging policy -> roles: Policy (scoring), Rollout (deploy + log), Learner (steps + loops),
    Evaluator (table rows); checkpoint layout, checkpointer and metrics writer.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from abpo_jax.data import records
from abpo_jax.data.events import event_rounds
from abpo_jax.data.splits import Example, build_examples, build_train_examples, prepare_data
from abpo_jax.losses.abpo import LossSettings
from abpo_jax.sim.logging_policy import LoggingPolicy
from abpo_jax.sim.replay import feedback_from_config
from abpo_jax.sim.users import simulator_from_config
from abpo_jax.train import state as st
from abpo_jax.config import ConfigError, method_losses
from abpo_jax.train.checkpoint import Checkpointer, Layout, checkpoint_dir, prepare_run_dir
from abpo_jax.train.distributed import barrier, on_main_process
from abpo_jax.data.catalogue import catalogue_completion_ids, catalogue_titles
from abpo_jax.train.evaluation import Evaluator
from abpo_jax.train.learner import Learner
from abpo_jax.train.modes.base import Mode
from abpo_jax.train.modes.item import ItemMode
from abpo_jax.train.modes.text import TextMode
from abpo_jax.train.outputs import MetricsWriter, is_main_process
from abpo_jax.train.policy import Encoder, Policy, prompt_style
from abpo_jax.train.rollout import Exposures, Rollout
from abpo_jax.train.seeds import RngStreams
from abpo_jax.train.text_policy import TextEncoder, TextPolicy, procedure_from_config


@dataclasses.dataclass
class Experiment:
    config: Any
    methods: tuple[str, ...]
    streams: RngStreams
    init_params: Any
    sft_examples: list[Example]
    encoder: Encoder
    learner: Learner
    rollout: Rollout
    evaluator: Evaluator
    layout: Layout
    ckpt: Checkpointer
    writer: MetricsWriter
    mode: Mode                 # the action space (item | text)
    logging: LoggingPolicy     # who deploys, with which logits

    def frozen(self, params: Any, copy: bool = True) -> dict:
        """`frozen_policies` of this run's logging policy."""
        return frozen_policies(self.logging, params, copy)


def check_sizes(config: Any, batch_ways: int) -> None:
    """Batch sizes that divide the mesh and give every round at least one update step
    (ConfigError naming the field; checked before any data is prepared)."""
    b, a = config.train.batch_size, config.train.grad_accum
    if b % a:
        raise ConfigError(f"config.train.batch_size={b} must be divisible by "
                         f"config.train.grad_accum={a}")
    if (b // a) % batch_ways:
        raise ConfigError(f"config.train.batch_size/grad_accum={b // a} must be divisible by "
                         f"the batch mesh axes data*fsdp={batch_ways}")
    if config.eval.batch_size % batch_ways:
        raise ConfigError(f"config.eval.batch_size={config.eval.batch_size} must be divisible by "
                         f"data*fsdp={batch_ways}")
    if config.rounds.get("split", "users") == "events":
        n = config.rounds.requests_per_round
        if 0 < n < b:
            raise ConfigError(f"config.rounds.requests_per_round={n} < config.train.batch_size="
                              f"{b}: a round's log would give no step")
    elif config.data.users_per_round < b:
        raise ConfigError(f"config.data.users_per_round={config.data.users_per_round} < "
                         f"config.train.batch_size={b}: a round's log would give no step")


def model_overrides(model: Any) -> dict[str, Any]:
    """`ModelConfig` fields set by `config.model` (compute dtypes, remat, layer scan, attention)."""
    return dict(dtype=model.dtype, param_dtype=model.param_dtype, remat=bool(model.remat),
                remat_policy=model.remat_policy, scan_layers=bool(model.scan_layers),
                attention=model.attention, attention_backend=model.attention_backend,
                matmul_precision=model.matmul_precision)


def load_configured_model(model: Any, mesh: Any = None) -> tuple[Any, Any]:
    """(Decoder, ModelConfig) of a pretrained `config.model` with its compute settings, as a run
    and the benchmarks build it."""
    from abpo_jax.models.loaders import load_model
    return load_model(model.source, model.path, mesh=mesh, weight_cache=model.weight_cache_dir,
                      random_init=bool(model.get("random_init", False)), **model_overrides(model))


def build_model(config: Any, vocab_size: int, mesh: Any, streams: RngStreams) -> nnx.Module:
    """The tiny item-id decoder or a pretrained model, born sharded, LoRA applied."""
    c = config.model
    if c.source == "tiny":
        from abpo_jax.models.config import ModelConfig
        from abpo_jax.models.decoder import create_sharded_model
        t = c.tiny
        mc = ModelConfig.tiny(vocab_size, hidden_size=t.hidden, num_layers=t.layers,
                              num_heads=t.heads, num_kv_heads=t.kv_heads,
                              head_dim=t.hidden // t.heads, intermediate_size=t.intermediate,
                              **model_overrides(c))
        model = create_sharded_model(mc, mesh, rngs_seed=streams.model_init)
    else:
        model, _ = load_configured_model(c, mesh)
    if int(c.lora.rank) > 0:
        from abpo_jax.models import lora
        model = lora.apply_lora(model, int(c.lora.rank), float(c.lora.alpha),
                                tuple(c.lora.targets), rngs=nnx.Rngs(streams.lora_init),
                                mesh=mesh)
    return model


def frozen_policies(logging: LoggingPolicy, params: Any, copy: bool = True) -> dict:
    """The fixed policies a method's state carries besides its train state: "ref" (pi_ref)
    and the logging policy's own (`LoggingPolicy.frozen`). Copies by default: every method
    owns its buffers (the steps donate them)."""
    own = (lambda p: jax.tree.map(jnp.copy, p)) if copy else (lambda p: p)
    return {"ref": own(params), **logging.frozen(params, own)}


def required_extras(config: Any) -> tuple[str, ...]:
    """The record extras this run's policy-gradient methods train on (`records.required`)."""
    base = LossSettings.from_config(config.loss)
    out: dict[str, None] = {}
    for kind, overrides in method_losses(config).values():
        if kind == "policy_gradient":
            s = base.replace(**overrides)
            out.update(dict.fromkeys(records.required(s.rewards, s.certainty_norm)))
    return tuple(out)


def ref_logp_from_log(config: Any) -> bool:
    """Whether item-mode policy steps take log pi~_ref from the log (`train.ref_logp=log`):
    only where the records' `policy_logp` is pi_ref's own, i.e. pi_ref = pi_{k-1}
    (`rounds.reference=previous`) and pi_{k-1} is what deployed and scored the round (logging
    `current`, or `uniform`, which logs pi_{k-1}'s scores before replacing them; `stale`
    deploys the round-0 policy). Methods with beta = 0 compute no pi_ref at all."""
    # A config recorded before the switch existed (a study's pickled cell configs, a run's
    # config.json) ran the forward: it keeps that program, so its cells and resumes match.
    return (config.train.get("ref_logp", "forward") == "log" and config.policy.mode == "item"
            and config.rounds.reference == "previous"
            and config.policy.logging_policy != "stale")


def build(config: Any, devices: Sequence[jax.Device] | None = None,
          record_config: bool = True) -> Experiment:
    """Build (not run) the experiment of `config` on `devices` (default: all). First, before
    any work: the run dir is writable and (`record_config`) holds no run of another config,
    the mesh fits the devices and the batch sizes fit the mesh."""
    run_dir, streams = pathlib.Path(config.run_dir), RngStreams(int(config.seed))
    prepare_run_dir(config, record_config)
    try:
        mesh = st.build_mesh(config, list(devices) if devices is not None else None)
    except ValueError as e:
        m = config.mesh
        raise ConfigError(f"config.mesh (data={m.data}, fsdp={m.fsdp}, tensor={m.tensor}) does "
                          f"not fit the devices: {e}") from None
    check_sizes(config, mesh.shape["data"] * mesh.shape["fsdp"])

    # --- data and simulator ----------------------------------------------------------------
    data = prepare_data(config)
    inter = data.interactions

    def fit_sim():
        return simulator_from_config(
            config, inter.user, inter.item, inter.num_users, inter.num_items,
            cache_dir=config.sim.cache_dir or str(run_dir / "sim"))

    sim = None
    if config.sim.get("feedback", "mnl") == "mnl":   # replay needs no fitted model
        # Process 0 fits and caches the simulator; the others then load that cache.
        sim = on_main_process(fit_sim)
        barrier("simulator-cache")
        sim = fit_sim() if sim is None else sim
    feedback = feedback_from_config(config, sim, data.split.sequences, inter.num_items)
    events = config.rounds.get("split", "users") == "events"
    if events:
        test_examples, round_examples, valid_examples, sft_examples = event_examples(
            config, data)
    else:
        test_examples, round_examples, sft_examples = user_examples(config, data, streams)
        valid_examples = None

    # --- tokenizer, model, roles -------------------------------------------------------------
    from abpo_jax.models.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(config.model.source, config.model.path, data.short_ids,
                               config.model.weight_cache_dir)
    catalogue = config.policy.mode == "text" and config.policy.candidates == "catalogue"
    # catalogue mode names items by their unique catalogue titles (repeats renamed) in the
    # prompt's history as in the completions
    titles = catalogue_titles(inter.item_titles) if catalogue else inter.item_titles
    encoder = Encoder(tokenizer, titles, data.short_ids, prompt_style(config),
                      bool(config.data.show_ratings), candidates_in_prompt=not catalogue,
                      item_text=config.policy.item_text)
    encoder.fit(test_examples + [e for r in round_examples + (valid_examples or []) for e in r]
                + sft_examples, exact=events)
    model = build_model(config, int(tokenizer.vocab_size), mesh, streams)
    split, init_params, frozen = st.place_model(model, config, mesh)
    show = bool(config.outputs.progress)
    policy = Policy(split, frozen, encoder, mesh, st.batch_sharding(mesh),
                    int(config.eval.batch_size), config.loss.certainty_tokens, show)
    required = required_extras(config)
    if config.policy.mode == "text":
        mode: Mode = build_text(config, encoder, tokenizer, inter, data.short_ids, catalogue,
                                split, frozen, mesh, show, streams, required)
    else:
        mode = ItemMode(policy, split, int(config.train.ppo_epochs), required,
                        ref_from_log=ref_logp_from_log(config))
    learner = Learner(split, frozen, mesh, config, mode, show, round_requests=min(
        map(len, round_examples)) if events and round_examples else 0)
    logs_root = run_dir / "logs"
    exposures = Exposures(logs_root)
    popularity = np.bincount(inter.item, minlength=inter.num_items).astype(np.float32)
    p = config.policy
    logging = LoggingPolicy(p.logging_policy, float(p.logging_temperature), streams.logging,
                            popularity, float(p.logging_popularity))
    methods = tuple(config.rounds.methods)
    writer = MetricsWriter(run_dir, tensorboard=config.outputs.tensorboard)
    learner.on_step = writer.step_scalars if writer.tensorboard else None   # training curves
    layout = Layout(methods, lambda: learner.fresh_state(init_params, sft=True),
                    lambda: {**learner.fresh_state(init_params), **frozen_policies(
                        logging, init_params, copy=False)})
    return Experiment(
        config=config, methods=methods, streams=streams, init_params=init_params,
        sft_examples=sft_examples, encoder=encoder, learner=learner,
        rollout=Rollout(mode, logging, feedback, round_examples, logs_root, per_event=events),
        evaluator=Evaluator(policy, test_examples, feedback, inter.num_items, popularity,
                            exposures, tuple(config.eval.ks), mode, valid_examples),
        layout=layout, ckpt=Checkpointer(checkpoint_dir(config), config.checkpoint.max_to_keep,
                                         config=config),
        writer=writer, mode=mode,
        logging=logging)


def user_examples(config: Any, data: Any, streams: RngStreams
                  ) -> tuple[list[Example], list[list[Example]], list[Example]]:
    """`rounds.split=users`: (test, per-round, SFT warm-start) requests of the user slices."""
    d = config.data
    common = dict(history_len=d.history_len, num_candidates=d.num_candidates,
                  num_items=data.interactions.num_items, seed=config.seed)
    test_examples = build_examples(data.split, data.slices.test, "test", **common)
    round_examples = [build_examples(data.split, users, "test", **common)
                      for users in data.slices.rounds]
    warm = build_train_examples(data.split, data.slices.warm, last_per_user=2, **common)
    order = np.random.default_rng(streams.sft_order).permutation(len(warm))
    sft_needed = config.train.sft_steps * config.train.batch_size
    sft_examples = [warm[i] for i in order[:max(sft_needed, 1)]] if warm else []
    if config.train.sft_steps > 0 and not sft_examples:
        raise ValueError("config.train.sft_steps > 0 but no warm-start examples: raise "
                         "config.data.max_users or lower num_test_users / users_per_round")
    return test_examples, round_examples, sft_examples


def event_examples(config: Any, data: Any) -> tuple[list[Example], list[list[Example]],
                                                    list[list[Example]], list[Example]]:
    """`rounds.split=events` (`data/events.py`): (test-window, per-round, validation after
    each round 0..R, SFT warm-start) requests."""
    er = event_rounds(config, data.split.sequences, data.interactions.num_items)
    if is_main_process():
        print(er.summary())
    return (er.test.examples(), [r.examples() for r in er.deploy],
            [r.examples() for r in er.valid], er.sft.examples())


def build_text(config: Any, encoder: Encoder, tokenizer: Any, inter: Any,
               short_ids: Sequence[str], catalogue: bool, split: Any, frozen: Any, mesh: Any,
               show: bool, streams: RngStreams, required: tuple[str, ...]) -> TextMode:
    """Text mode: its encoder (rollout procedure at `policy.temperature`), sampler, logging
    procedure (at `policy.logging_temperature`) and evaluation settings."""
    sequences = None
    if catalogue:
        sequences = catalogue_completion_ids(tokenizer, inter.item_titles, short_ids,
                                             config.policy.item_text)
        max_item = max(len(x) for x in sequences)
    else:
        max_item = encoder.completion_len
    rollout_proc = procedure_from_config(config, tokenizer, max_item,
                                         config.policy.temperature)
    text = TextEncoder(encoder, rollout_proc, tuple(config.loss.format_rewards), sequences)
    policy = TextPolicy(split, frozen, text, mesh, st.batch_sharding(mesh),
                        int(config.eval.batch_size), show)
    logging_proc = procedure_from_config(config, tokenizer, max_item,
                                         config.policy.logging_temperature)
    return TextMode(policy, logging_proc, int(config.eval.text_samples), int(config.eval.beam),
                    streams.text_eval, config.loss.certainty_tokens, required)
