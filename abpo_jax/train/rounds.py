"""Continual update rounds (the main experiment): `abpo-jax demo` / `abpo-jax train`.

    abpo-jax demo                                   # configs/demo.py: ML-1M slice + SmolLM2
    abpo-jax train --config=configs/tiny.py         # tiny item-id decoder, seconds per round

Round 0: SFT warm start on next-item targets of the warm users (the prior serving policy),
evaluated before any bandit update. Round k >= 1, for each method of `rounds.methods`: deploy
pi_{k-1} on the round's fresh users -> log exposures with exact propensities and simulated
outcomes (validated, stored) -> update with the method -> evaluate on held-out test users ->
checkpoint. Re-running the same command resumes from the newest readable checkpoint and
reaches the same parameters and metrics as an uninterrupted run.

RNG streams: fold_in(PRNGKey(seed), round) then fold_in(step) inside the train step; the
logging policy uses fold_in(PRNGKey(seed + 1), round) for every method (common random numbers).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import time
from typing import Any, Sequence

import jax
from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from abpo_jax.data import log_store
from abpo_jax.data.logs import LogRecord
from abpo_jax.data.pipeline import log_iterator
from abpo_jax.data.prompts import render_completion, render_messages
from abpo_jax.data.splits import Example, build_examples, build_train_examples, prepare_data
from abpo_jax.eval.evaluate import TABLE_COLUMNS, log_metrics, policy_metrics
from abpo_jax.losses.settings import LossSettings
from abpo_jax.sampling.group_scoring import bucket
from abpo_jax.sampling.trie import candidate_token_sequences
from abpo_jax.sim.logging_policy import log_round
from abpo_jax.sim.users import simulator_from_config
from abpo_jax.train import state as st
from abpo_jax.train.checkpoint import Checkpointer, checkpoint_dir
from abpo_jax.train.distributed import barrier, initialize_distributed, on_main_process
from abpo_jax.train.faults import kill_point
from abpo_jax.train.outputs import MetricsWriter, is_main_process, plot_metrics, print_table, \
    progress
from abpo_jax.train.policy import CandidateBatch, pack_candidates, score_candidates
from abpo_jax.train.step import (POLICY_METHODS, RLBatch, init_step_state, make_policy_step,
                                 make_sft_step, method_settings)

log = logging.getLogger(__name__)

LOGGING_SEED_OFFSET = 1  # logging-policy stream: PRNGKey(seed + 1), distinct from training


# --- tokenization -----------------------------------------------------------------------------


def build_tokenizer(config, short_ids: Sequence[str]) -> Any:
    """The model source's tokenizer (item-id vocabulary for `model.source=tiny`)."""
    from abpo_jax.models.tokenizer import load_tokenizer
    return load_tokenizer(config.model.source, config.model.path, short_ids)


def prompt_style(config) -> str:
    return "ids_only" if config.model.source == "tiny" else "full"


@dataclasses.dataclass
class Encoder:
    """Renders and tokenizes requests (history + candidates) with fixed padded sizes, so every
    batch of the run has one shape (one compiled step)."""

    tokenizer: Any
    titles: Sequence[str]
    short_ids: Sequence[str]
    style: str
    show_ratings: bool
    prompt_len: int = 0
    completion_len: int = 0
    num_candidates: int = 0

    def prompt_ids(self, example: Example) -> list[int]:
        messages = render_messages(example, self.titles, self.short_ids,
                                   show_ratings=self.show_ratings, style=self.style)
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return list(self.tokenizer.encode(out) if isinstance(out, str) else out)

    def completion_ids(self, example: Example) -> list[list[int]]:
        texts = [render_completion(self.short_ids[int(c)]) for c in example.candidates]
        return [list(x) for x in candidate_token_sequences(self.tokenizer, texts, True)]

    def fit(self, examples: Sequence[Example]) -> None:
        """Fix the padded sizes from every request the run will see (bucketed)."""
        self.prompt_len = bucket(max(len(self.prompt_ids(e)) for e in examples), 16)
        self.completion_len = max(len(o) for e in examples[:64] for o in self.completion_ids(e))
        self.completion_len = bucket(self.completion_len + 2, 4)  # room for longer ids
        self.num_candidates = max(len(e.candidates) for e in examples)

    def encode(self, examples: Sequence[Example]) -> CandidateBatch:
        return pack_candidates(
            [self.prompt_ids(e) for e in examples], [self.completion_ids(e) for e in examples],
            prompt_len=self.prompt_len, completion_len=self.completion_len,
            num_candidates=self.num_candidates,
            pad_id=int(getattr(self.tokenizer, "pad_id", 0) or 0))


def example_from_record(record: LogRecord) -> Example:
    """The request of a logged exposure, as an Example (target from extras, -1 if unknown)."""
    cands = np.asarray(record.candidate_item_ids, np.int32)
    target = int(record.extras.get("target_item_id", -1))
    hits = np.flatnonzero(cands == target)
    history = np.asarray(record.context_item_ids, np.int32)
    return Example(user=record.user_id, history=history,
                   history_ratings=np.zeros(len(history), np.float32), target=target,
                   candidates=cands, target_index=int(hits[0]) if hits.size else -1)


# --- the run -----------------------------------------------------------------------------------


class ContinualRun:
    """Everything one continual experiment needs, built once; `run()` executes / resumes it."""

    def __init__(self, config, devices: Sequence[jax.Device] | None = None):
        if config.policy.mode != "item":
            raise NotImplementedError(
                f"config.policy.mode={config.policy.mode!r}: the continual rounds train the "
                "item-mode policy only (text mode is sampling-only for now); use 'item'")
        self.config = config
        self.run_dir = pathlib.Path(config.run_dir)
        self.methods = tuple(config.rounds.methods)
        self.mesh = st.build_mesh(config, list(devices) if devices is not None else None)
        self.data_sharding = st.batch_sharding(self.mesh)
        self.micro_sharding = NamedSharding(self.mesh, P(None, ("data", "fsdp")))
        self.replicated = st.replicated(self.mesh)
        self.batch_ways = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self._check_sizes()

        self.data = prepare_data(config)
        inter = self.data.interactions
        self.num_items = inter.num_items
        self.popularity = np.bincount(inter.item, minlength=self.num_items).astype(np.float32)
        def fit_sim():
            return simulator_from_config(
                config, inter.user, inter.item, inter.num_users, inter.num_items,
                cache_dir=config.sim.cache_dir or str(self.run_dir / "sim"))

        # Process 0 fits and caches the simulator; the others then load that cache.
        self.sim = on_main_process(fit_sim)
        barrier("simulator-cache")
        if self.sim is None:
            self.sim = fit_sim()
        split, d = self.data.split, config.data
        common = dict(history_len=d.history_len, num_candidates=d.num_candidates,
                      num_items=self.num_items, seed=config.seed)
        self.test_examples = build_examples(split, self.data.slices.test, "test", **common)
        self.round_examples = [build_examples(split, users, "test", **common)
                               for users in self.data.slices.rounds]
        sft_needed = config.train.sft_steps * config.train.batch_size
        warm = build_train_examples(split, self.data.slices.warm, last_per_user=2, **common)
        order = np.random.default_rng([config.seed, 7]).permutation(len(warm))
        self.sft_examples = [warm[i] for i in order[:max(sft_needed, 1)]] if warm else []
        if config.train.sft_steps > 0 and not self.sft_examples:
            raise ValueError("config.train.sft_steps > 0 but no warm-start examples: raise "
                             "config.data.max_users or lower num_test_users / users_per_round")

        self.tokenizer = build_tokenizer(config, self.data.short_ids)
        self.encoder = Encoder(self.tokenizer, inter.item_titles, self.data.short_ids,
                               prompt_style(config), bool(d.show_ratings))
        self.encoder.fit(self.test_examples + [e for r in self.round_examples for e in r]
                         + self.sft_examples)
        self._build_model()
        self.settings = LossSettings.from_mapping(config.loss)
        self.writer = MetricsWriter(self.run_dir, tensorboard=config.outputs.tensorboard)
        self.ckpt = Checkpointer(checkpoint_dir(config), config.checkpoint.max_to_keep)
        self._steps: dict[str, Any] = {}
        self.train_metrics: dict[tuple[int, str], dict] = {}

    # -- setup -------------------------------------------------------------------------------

    def _check_sizes(self) -> None:
        c = self.config
        b, a = c.train.batch_size, c.train.grad_accum
        if b % a:
            raise ValueError(f"config.train.batch_size={b} must be divisible by "
                             f"config.train.grad_accum={a}")
        if (b // a) % self.batch_ways:
            raise ValueError(f"config.train.batch_size/grad_accum={b // a} must be divisible by "
                             f"the batch mesh axes data*fsdp={self.batch_ways}")
        if c.eval.batch_size % self.batch_ways:
            raise ValueError(f"config.eval.batch_size={c.eval.batch_size} must be divisible by "
                             f"data*fsdp={self.batch_ways}")
        if c.data.users_per_round < b:
            raise ValueError(f"config.data.users_per_round={c.data.users_per_round} < "
                             f"config.train.batch_size={b}: a round's log would give no step")

    def _build_model(self) -> None:
        c = self.config
        dtype, param_dtype, remat = c.model.dtype, c.model.param_dtype, bool(c.model.remat)
        if c.model.source == "tiny":
            from abpo_jax.models.config import ModelConfig
            t = c.model.tiny
            mc = ModelConfig.tiny(
                int(self.tokenizer.vocab_size), hidden_size=t.hidden, num_layers=t.layers,
                num_heads=t.heads, num_kv_heads=t.kv_heads, head_dim=t.hidden // t.heads,
                intermediate_size=t.intermediate, dtype=dtype, param_dtype=param_dtype,
                remat=remat)
            from abpo_jax.models.sharding import create_sharded_model
            model = create_sharded_model(mc, self.mesh, rngs_seed=c.seed)
        else:
            from abpo_jax.models.loaders import load_model
            model, mc = load_model(c.model.source, c.model.path, mesh=self.mesh,
                                   dtype=dtype, param_dtype=param_dtype, remat=remat)
        if int(c.model.lora.rank) > 0:
            from abpo_jax.models import lora
            model = lora.apply_lora(model, int(c.model.lora.rank), float(c.model.lora.alpha),
                                    tuple(c.model.lora.targets),
                                    rngs=nnx.Rngs(c.seed + 1), mesh=self.mesh)
        self.model_config = mc
        self.split, self.init_params, self.frozen = st.place_model(model, c, self.mesh)

    # -- compiled functions --------------------------------------------------------------------

    def _tx(self, sft: bool, total_steps: int) -> optax.GradientTransformation:
        lr = self.config.train.sft_learning_rate if sft else self.config.train.learning_rate
        return st.make_optimizer(self.config, float(lr), max(total_steps, 1))

    def _state_shardings(self, state: dict) -> Any:
        return jax.tree.map(lambda x: x.sharding, state)

    def _jit_step(self, name: str, fn, state: dict, num_batch_args: int, extra_repl: int = 0):
        """jit once per name: state donated, explicit shardings (batch over data x fsdp)."""
        if name not in self._steps:
            sh = self._state_shardings(state)
            frozen_sh = jax.tree.map(lambda x: x.sharding, self.frozen)
            ins = [sh, frozen_sh]
            if extra_repl:
                ins.append(jax.tree.map(lambda x: x.sharding, state["params"]))
            ins += [self.micro_sharding] * num_batch_args
            if name.startswith("policy"):
                ins.append(self.replicated)
            self._steps[name] = jax.jit(fn, in_shardings=tuple(ins),
                                        out_shardings=(sh, self.replicated), donate_argnums=0)
        return self._steps[name]

    def _score_fn(self):
        if "score" not in self._steps:
            split = self.split
            certainty_on = self.settings.certainty_tokens

            def score(params, frozen, cands):
                return score_candidates(split.merge(params, frozen), cands, certainty_on)[0]

            self._steps["score"] = jax.jit(
                score, out_shardings=self.replicated)
        return self._steps["score"]

    def _put(self, tree: Any, sharding: NamedSharding) -> Any:
        """Host arrays holding the *global* batch (identical on every process) -> sharded."""
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)

    def _put_local(self, tree: Any, sharding: NamedSharding) -> Any:
        """Host arrays holding this process's slice of the batch -> one global sharded array
        (the slices of all processes concatenated; with one process the same as `_put`)."""
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

    def policy_log_probs(self, params: Any, examples: Sequence[Example], desc: str,
                         kill: str | None = None) -> np.ndarray:
        """log pi~ [N, C] of the policy with trainable `params` (batched, padded, sharded)."""
        bs = int(self.config.eval.batch_size)
        score = self._score_fn()
        out = []
        chunks = range(0, len(examples), bs)
        for i in progress(chunks, desc, total=len(chunks), enabled=self.config.outputs.progress):
            chunk = list(examples[i:i + bs])
            n = len(chunk)
            chunk += [chunk[-1]] * (bs - n)
            cands = self._put(self.encoder.encode(chunk), self.data_sharding)
            with jax.set_mesh(self.mesh):
                lp = score(params, self.frozen, cands)
            out.append(np.asarray(lp)[:n])
            if kill:
                kill_point(kill)
        return np.concatenate(out)

    # -- state / checkpoint layout ----------------------------------------------------------------

    def _fresh_state(self, params: Any, tx: optax.GradientTransformation) -> dict:
        return init_step_state(params, st.init_opt_state(tx, params, self.mesh))

    def _rl_tx(self) -> optax.GradientTransformation:
        return self._tx(False, self._update_steps())

    def _abstract(self, meta: dict) -> dict:
        """The checkpoint tree for `meta`: {"methods": {m: state + ref}} or {"sft": state}."""
        if meta["phase"] in ("sft",):
            return {"sft": st.abstract_like(self._fresh_state(self.init_params,
                                                              self._tx(True, 1)))}
        proto = self._fresh_state(self.init_params, self._rl_tx())
        one = st.abstract_like({**proto, "ref": self.init_params})
        return {"methods": {m: one for m in self.methods}}

    def _save(self, tree: dict, meta: dict, data_iter: Any = None) -> None:
        # Past every existing step, including an unreadable newest one we fell back from.
        self._ckpt_id = max([self._ckpt_id, *self.ckpt.steps()]) + 1
        self.ckpt.save(self._ckpt_id, tree, meta, data_iter)

    # -- phases ----------------------------------------------------------------------------------

    def _update_steps(self) -> int:
        c = self.config
        if c.train.steps_per_round > 0:
            return int(c.train.steps_per_round)
        return (c.data.users_per_round // c.train.batch_size) * int(c.train.epochs_per_round)

    def _micro(self, host: Any) -> Any:
        """This process's [B/P, ...] host arrays (P processes) -> global [A, B/A, ...] arrays
        placed with the micro-batch sharding (each process fills its devices' rows)."""
        a = int(self.config.train.grad_accum)
        host = jax.tree.map(lambda x: np.asarray(x).reshape((a, -1) + np.shape(x)[1:]), host)
        return self._put_local(host, self.micro_sharding)

    def run_sft(self, state: dict | None, start: int) -> dict:
        """Round-0 warm start: `train.sft_steps` SFT steps on next-item targets."""
        c = self.config
        steps, bs = int(c.train.sft_steps), int(c.train.batch_size)
        tx = self._tx(True, steps)
        if state is None:
            state = self._fresh_state(self.init_params, tx)
        fn = self._jit_step("sft", make_sft_step(self.split, tx), state, 3)
        lo = jax.process_index() * (bs // jax.process_count())
        for s in progress(range(start, steps), "sft", total=steps - start,
                          enabled=c.outputs.progress):
            # this process's share of the global batch (all of it with one process)
            local = range(s * bs + lo, s * bs + lo + bs // jax.process_count())
            ex = [self.sft_examples[i % len(self.sft_examples)] for i in local]
            cands = self._micro(self.encoder.encode(ex))
            index = self._micro(np.array([e.target_index for e in ex], np.int32))
            weight = self._micro(np.ones(len(ex), np.float32))
            with jax.set_mesh(self.mesh):
                state, m = fn(state, self.frozen, cands, index, weight)
            kill_point("sft")
            every = int(c.checkpoint.every_steps)
            if every and (s + 1) % every == 0 and s + 1 < steps:
                self._save({"sft": state}, {"phase": "sft", "round": 0, "step": s + 1})
        return state

    def logs_dir(self, method: str) -> pathlib.Path:
        return self.run_dir / "logs" / method

    def deploy(self, k: int, method: str, params: Any) -> log_store.RoundLog:
        """Round k's log for `method`: reuse a committed one (resume), else deploy and log.

        The log is global data: every process scores the round's requests (the scoring is one
        sharded computation), process 0 alone samples the exposures and commits the log, the
        others wait at a barrier and read it back (the run directory is shared by the hosts).
        """
        logs_dir = self.logs_dir(method)
        path = log_store.round_path(logs_dir, k)
        barrier(f"deploy-check-r{k}-{method}")   # all processes decide on the same state
        if path.exists():
            return log_store.open_round(path)
        examples = self.round_examples[k - 1]
        log_pi = self.policy_log_probs(params, examples, f"rollout r{k} {method}",
                                       kill="rollout")
        if is_main_process():
            # batch_size=len(examples): log_round asks for all scores in one call.
            log_round(examples, lambda chunk: log_pi, self.sim, round_index=k,
                      seed=self.config.seed + LOGGING_SEED_OFFSET, logs_dir=str(logs_dir),
                      policy_revision=f"{method}@{k - 1}",
                      temperature=float(self.config.policy.logging_temperature),
                      timestamp=float(k), batch_size=len(examples))
        barrier(f"deploy-written-r{k}-{method}")
        return log_store.open_round(path)

    def _featurize(self, record: LogRecord) -> dict[str, np.ndarray]:
        ex = example_from_record(record)
        cands = self.encoder.encode([ex])
        p = cands.packed
        click = np.asarray(self.sim.click_probs(np.asarray([ex.user]), ex.candidates[None]))[0]
        return {
            "tokens": p.tokens[0], "positions": p.positions[0], "segments": p.segments[0],
            "prompt_lengths": p.prompt_lengths[0], "completion_tokens": p.completion_tokens[0],
            "completion_mask": p.completion_mask[0], "item_mask": cands.item_mask[0],
            "valid_cands": cands.valid[0],
            "exposed": np.int32(record.exposed_index),
            "propensity": np.float32(record.propensity),
            "outcome": np.int32(record.outcome),
            "target": np.int32(ex.target_index), "sim_reward": click.astype(np.float32),
        }

    def _rl_batch(self, b: dict) -> RLBatch:
        from abpo_jax.sampling.group_scoring import PackedGroup
        packed = PackedGroup(tokens=b["tokens"], positions=b["positions"],
                             segments=b["segments"], prompt_lengths=b["prompt_lengths"],
                             completion_tokens=b["completion_tokens"],
                             completion_mask=b["completion_mask"])
        host = RLBatch(cands=CandidateBatch(packed, b["item_mask"], b["valid_cands"]),
                       exposed=b["exposed"], propensity=b["propensity"], outcome=b["outcome"],
                       target=b["target"], sim_reward=b["sim_reward"],
                       valid=np.ones(len(b["exposed"]), np.float32))
        return self._micro(host)

    def _log_iterator(self, roundlog: log_store.RoundLog, k: int):
        steps = self._update_steps()
        bs = int(self.config.train.batch_size)
        per_epoch = max(len(roundlog) // bs, 1)
        return log_iterator(
            [str(p) for p in roundlog.shard_paths], batch_size=bs // jax.process_count(),
            seed=int(self.config.seed * 1000 + k), featurize=self._featurize,
            num_epochs=max(1, math.ceil(steps / per_epoch)))

    def update(self, k: int, mi: int, method: str, mstate: dict, roundlog, start: int,
               data_iter, methods_tree: dict, meta: dict) -> dict:
        """Round k's update of one method, from step `start` of the round."""
        c = self.config
        steps = self._update_steps()
        if method == "no_update":
            return mstate
        round_key = jax.random.fold_in(jax.random.key(c.seed), k)
        if method in POLICY_METHODS:
            settings = method_settings(self.settings, method)
            tx = self._rl_tx()
            name = f"policy:{method}"
            state = {key: mstate[key] for key in ("params", "opt", "step", "skipped", "cert")}
            fn = self._jit_step(name, make_policy_step(self.split, tx, settings,
                                                       settings.certainty_tokens),
                                state, 1, extra_repl=1)
        else:  # sft_positive
            tx = self._rl_tx()
            state = {key: mstate[key] for key in ("params", "opt", "step", "skipped", "cert")}
            fn = self._jit_step("sft_positive", make_sft_step(self.split, tx), state, 3)
        ref = mstate["ref"]
        hist = list(meta.get("train_hist", [])) if start else []  # steps before a resume
        for s in progress(range(start, steps), f"update r{k} {method}", total=steps - start,
                          enabled=c.outputs.progress):
            host = next(data_iter)
            batch = self._rl_batch(host)
            with jax.set_mesh(self.mesh):
                if method in POLICY_METHODS:
                    state, m = fn(state, self.frozen, ref, batch, round_key)
                else:
                    state, m = fn(state, self.frozen, batch.cands, batch.exposed,
                                  batch.outcome.astype(jnp.float32))
            hist.append({key: float(v) for key, v in jax.device_get(m).items()})
            kill_point("update")
            every = int(c.checkpoint.every_steps)
            if every and (s + 1) % every == 0 and s + 1 < steps:
                methods_tree[method] = {**state, "ref": ref}
                self._save({"methods": methods_tree},
                           {"round": k, "method_index": mi, "phase": "update",
                            "step": s + 1, "train_hist": hist}, data_iter)
        self.train_metrics[(k, method)] = {
            f"train/{key}": float(np.mean([h[key] for h in hist])) for key in (hist[0] if hist
                                                                              else {})}
        if hist:
            self.train_metrics[(k, method)]["train/skipped"] = int(state["skipped"])
        return {**state, "ref": ref}

    def evaluate(self, k: int, method: str, params: Any,
                 roundlog: log_store.RoundLog | None) -> dict:
        """One per-round row: held-out ranking / exposure / simulated CTR, and the SNIPS
        estimate of this policy's CTR from the round's log vs its simulated truth."""
        ex = self.test_examples
        lp = self.policy_log_probs(params, ex, f"eval r{k} {method}", kill="eval")
        cands = np.stack([e.candidates for e in ex])
        users = np.array([e.user for e in ex])
        click = np.asarray(self.sim.click_probs(users, cands))
        exposed = self._exposed_so_far(method, k)
        row = {"round": k, "method": method,
               **policy_metrics(lp, cands, np.array([e.target_index for e in ex]),
                                num_items=self.num_items, item_popularity=self.popularity,
                                exposed_items=exposed, ks=tuple(self.config.eval.ks),
                                click_probs=click)}
        if roundlog is not None:
            records = list(roundlog)
            rex = [example_from_record(r) for r in records]
            rlp = self.policy_log_probs(params, rex, f"eval-log r{k} {method}")
            rc = np.stack([e.candidates for e in rex])
            rclick = np.asarray(self.sim.click_probs(np.array([e.user for e in rex]), rc))
            row.update(log_metrics(rlp, np.array([r.exposed_index for r in records]),
                                   np.array([r.propensity for r in records]),
                                   np.array([r.outcome for r in records]), rclick))
            row["log_ctr"] = float(np.mean([r.outcome for r in records]))
        row.update(self.train_metrics.get((k, method), {}))
        return row

    def _exposed_so_far(self, method: str, k: int) -> np.ndarray:
        items = []
        for r in range(1, k + 1):
            path = log_store.round_path(self.logs_dir(method), r)
            if path.exists():
                items += [rec.exposed_item_id for rec in log_store.open_round(path)]
        return np.asarray(items, np.int64)

    # -- driver ------------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        c = self.config
        t0 = time.time()
        restored = self.ckpt.restore_latest(self._abstract, self._iterator_for)
        self._ckpt_id = 0 if restored is None else restored[0]
        meta = {"phase": "start", "round": 0} if restored is None else restored[2]
        tree = None if restored is None else restored[1]
        if restored is not None and is_main_process():
            print(f"resuming from checkpoint {restored[0]}: {meta}")

        if meta["phase"] in ("start", "sft"):
            start = meta.get("step", 0) if meta["phase"] == "sft" else 0
            sft_state = tree["sft"] if tree is not None and meta["phase"] == "sft" else None
            if c.train.sft_steps > 0:
                sft_state = self.run_sft(sft_state, start)
                params = sft_state["params"]
            else:
                params = self.init_params
            row = self.evaluate(0, "sft", params, None)
            for m in self.methods:
                self.writer.write({**row, "method": m})
            tx = self._rl_tx()
            # Every method owns its buffers: the train step donates them.
            tree = {"methods": {m: {**self._fresh_state(jax.tree.map(jnp.copy, params), tx),
                                    "ref": jax.tree.map(jnp.copy, params)}
                                for m in self.methods}}
            meta = {"phase": "done", "round": 0, "method_index": len(self.methods) - 1}
            self._save(tree, meta)

        methods_tree = tree["methods"]
        first_k, first_mi = meta["round"], meta.get("method_index", 0)
        for k in range(max(first_k, 1), int(c.rounds.num_rounds) + 1):
            for mi, method in enumerate(self.methods):
                if meta["phase"] == "done" and (k, mi) <= (first_k, first_mi):
                    continue
                resuming_update = (meta["phase"] == "update" and (k, mi) == (first_k, first_mi))
                mstate = methods_tree[method]
                if not resuming_update:
                    # pi_{k-1} deploys; pi_ref = pi_{k-1} (or the round-0 policy).
                    if c.rounds.reference == "previous":
                        mstate = {**mstate, "ref": jax.tree.map(jnp.copy, mstate["params"])}
                    if c.train.reset_optimizer:
                        fresh = self._fresh_state(mstate["params"], self._rl_tx())
                        mstate = {**mstate, "opt": fresh["opt"]}
                roundlog = self.deploy(k, method, mstate["ref"] if resuming_update
                                       else mstate["params"])
                data_iter = (self._restored_iter if resuming_update
                             else iter(self._log_iterator(roundlog, k)))
                start = meta.get("step", 0) if resuming_update else 0
                mstate = self.update(k, mi, method, mstate, roundlog, start, data_iter,
                                     methods_tree, meta)
                methods_tree[method] = mstate
                self.writer.write(self.evaluate(k, method, mstate["params"], roundlog))
                meta = {"phase": "done", "round": k, "method_index": mi}
                first_k, first_mi = k, mi
                self._save({"methods": methods_tree}, meta)
        self.ckpt.close()
        rows = self.writer.rows()
        self.finish(rows, time.time() - t0)
        return rows

    _restored_iter: Any = None

    def _iterator_for(self, meta: dict) -> Any:
        """The grain iterator a mid-update checkpoint restores into (None otherwise)."""
        if meta.get("phase") != "update":
            self._restored_iter = None
            return None
        method = self.methods[meta["method_index"]]
        roundlog = log_store.open_round(log_store.round_path(self.logs_dir(method),
                                                             meta["round"]))
        self._restored_iter = iter(self._log_iterator(roundlog, meta["round"]))
        return self._restored_iter

    def finish(self, rows: list[dict], seconds: float) -> None:
        """Table, plots, TensorBoard flush (main process only)."""
        self.writer.close()
        if not is_main_process():
            return
        print_table(rows, [col for col in TABLE_COLUMNS if any(col in r for r in rows)])
        if self.config.outputs.plots:
            plot_metrics(rows, self.run_dir / "plots", TABLE_COLUMNS)
        print(f"run dir: {self.run_dir}  ({seconds:.0f} s)")


def main(config) -> list[dict]:
    """`abpo-jax demo` / `abpo-jax train`: run (or resume) the continual rounds."""
    initialize_distributed(config)  # multi-host: before anything touches the devices
    return ContinualRun(config).run()


def evaluate_run(config, devices: Sequence[jax.Device] | None = None) -> list[dict]:
    """`abpo-jax eval`: evaluate the newest checkpoint of each method (or the base model)."""
    run = ContinualRun(config, devices)
    restored = run.ckpt.restore_latest(run._abstract)
    rows = []
    if restored is None or "methods" not in restored[1]:
        rows.append(run.evaluate(0, "base", run.init_params, None))
    else:
        k = restored[2]["round"]
        for m, mstate in restored[1]["methods"].items():
            rows.append(run.evaluate(k, m, mstate["params"], None))
    print_table(rows, [c for c in TABLE_COLUMNS if any(c in r for r in rows)], "evaluation")
    return rows
