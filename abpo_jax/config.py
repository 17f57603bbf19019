"""Default configuration, shared by every config in `configs/`, and its validation.

Every ambiguous choice of the ABPO design card (`DESIGN.md`) is a field here with its default.
Configs in `configs/*.py` start from :func:`base_config` and override what they change; the CLI
applies `--config.a.b=value` overrides and then calls :func:`validate`, which fails fast with an
error naming the field and the allowed values.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from typing import Any, Callable

import ml_collections

from abpo_jax.models.config import (ATTENTION_BACKENDS, ATTENTION_IMPLS, MATMUL_PRECISIONS,
                                    REMAT_POLICIES)


# Logical axis -> mesh axis (a name, a tuple of names, or None = replicated), in the spirit of
# MaxText's `logical_axis_rules`; `models/sharding.py` reads this table (`config.mesh.rules`).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("lora_rank", None),
    ("cache_length", None),
)

# Method name -> (update kind, loss overrides): the one place that decides what a method
# switches (DESIGN.md "Methods are data"). `base_config` turns it into `config.methods`; a config
# file may add its own entries there. An entry may also carry `learning_rate` (its own
# train.learning_rate: how `abpo-jax study` applies a tuned choice, study/tuning.py).
UPDATE_KINDS = ("policy_gradient", "sft_positive", "none")
METHOD_TRAIN_FIELDS = ("learning_rate",)
METHOD_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "abpo": ("policy_gradient", {}),                           # the configured loss
    "abpo_no_snips": ("policy_gradient", {"snips": "off"}),    # unit anchor weights
    "abpo_no_tempering": ("policy_gradient", {"tempering": "one"}),
    "abpo_tempering_c": ("policy_gradient", {"tempering": "c"}),    # penalise confident misses
    "abpo_tempering_threshold": ("policy_gradient", {"tempering": "threshold"}),
    "abpo_tempering_on_reward": ("policy_gradient", {"tempering_on": "reward"}),  # 12-01 reading
    "abpo_baseline_only": ("policy_gradient", {"anchor": "baseline_only"}),
    "grpo": ("policy_gradient", {"anchor": "off", "tempering": "one"}),  # untempered outcome
    # BanditNet (Joachims, Swaminathan & de Rijke 2018): the logged action only, weight w~,
    # advantage y - lambda_b (loss.baseline_value); no rollouts, so no KL either.
    "banditnet": ("policy_gradient", {"num_generations": 0, "anchor": "full",
                                      "advantage_baseline": "constant", "rewards": ("outcome",),
                                      "negative_scale": 0.0, "tempering": "one", "beta": 0.0,
                                      "snips": "on"}),
    "sft_positive": ("sft_positive", {"snips": "off"}),        # SFT on clicked exposures
    "ips_sft": ("sft_positive", {"snips": "on"}),              # ... weighted by w~ (SNIPS)
    "no_update": ("none", {}),
}


class ConfigError(ValueError):
    """A config field holds a value the program cannot run with."""


def base_config() -> ml_collections.ConfigDict:
    """Full default config (ABPO on MovieLens-1M with the embedded SmolLM2)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.run_dir = "runs/default"

    # --- data -----------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.dataset = "ml-1m"          # ml-1m | ml-100k | amazon2018 | amazon2023
    c.data.path = ""                  # user-supplied files (amazon*); package data otherwise
    c.data.k_core = 5                 # iterative k-core filter on users and items (0 = off)
    c.data.min_rating = 0.0           # keep interactions rated >= this (0 = all)
    c.data.history_len = 10           # H: items of history shown in the prompt
    c.data.num_candidates = 20        # C: closed candidate list (target + C-1 negatives)
    c.data.show_ratings = False
    c.data.max_users = 0              # 0 = all users; else the first N users in time order
    c.data.num_test_users = 500       # held-out evaluation users
    c.data.users_per_round = 512      # fresh users deployed on per continual round

    # --- model ----------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.source = "smollm2"        # smollm2 | gemma3_270m (packaged GGUFs) | hf (safetensors dir) | gguf | tiny
    c.model.path = ""                 # directory or file for hf / gguf
    c.model.random_init = False       # hf only: config.json's architecture, random weights (throughput/MFU benchmarks where the weights cannot travel; never for results)
    c.model.weight_cache_dir = ""     # dequantized GGUF tensors: "" = ~/.cache/abpo_jax/weights; off
    c.model.dtype = "float32"         # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"
    c.model.remat = False
    c.model.remat_policy = "nothing_saveable"  # what remat keeps (a jax.checkpoint_policies name)
    c.model.scan_layers = True        # one lax.scan over stacked layers (compiles like 1 layer)
    c.model.attention = "dense"       # dense (reference) | dot_product_attention (jax.nn; fused where available)
    c.model.attention_backend = "auto"  # dot_product_attention implementation: auto | xla | cudnn
    c.model.matmul_precision = "float32"  # weight + attention matmuls: float32 | bfloat16 (bf16 operands, f32 accumulate)
    c.model.tiny = ml_collections.ConfigDict()   # only for source=tiny (item-id tokens)
    c.model.tiny.hidden = 64
    c.model.tiny.layers = 2
    c.model.tiny.heads = 4
    c.model.tiny.kv_heads = 2
    c.model.tiny.intermediate = 128
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0             # 0 = full fine-tuning
    c.model.lora.alpha = 16.0
    c.model.lora.targets = ("q_proj", "v_proj")

    # --- policy (action space) ------------------------------------------------------------
    c.policy = ml_collections.ConfigDict()
    c.policy.mode = "item"            # item (score the closed candidate list) | text (sample completions)
    c.policy.candidates = "list"      # list (closed candidate list in the prompt) | catalogue (whole catalogue; text mode)
    c.policy.item_text = "id"         # catalogue mode: the item is generated as its id | title
    c.policy.temperature = 1.0        # text mode: rollout sampling temperature (pi_old's procedure)
    c.policy.top_k = 0                # text mode: top-k truncation (0 = off), rollouts and logging
    c.policy.top_p = 1.0              # text mode: nucleus truncation (1 = off), rollouts and logging
    c.policy.max_think_tokens = 0     # text mode: free text (<think>...</think>) budget before the item; 0 = none
    c.policy.logging_temperature = 1.0  # temperature of the deployed logging policy
    c.policy.logging_policy = "current"  # current (pi_{k-1} deploys) | stale (the round-0 policy always) | uniform (1/C; item mode)
    c.policy.logging_popularity = 0.0  # b: logging logits + b log(1 + item count) (exposure bias)

    # --- user simulator -------------------------------------------------------------------
    c.sim = ml_collections.ConfigDict()
    c.sim.preference = "mf"           # mf (matrix factorisation) | cooc (item co-occurrence)
    c.sim.mf_dim = 32
    c.sim.mf_steps = 300
    c.sim.temperature = 1.5           # GEE MNL temperature T
    c.sim.rejection_score = 11.0      # GEE outside-option score RS (on the 1..10 score scale)
    c.sim.external_ignore = 0.2       # P(no response for an external reason)
    c.sim.cache_dir = ""              # fitted-preference cache (default <run_dir>/sim)
    c.sim.feedback = "mnl"            # mnl (the fitted MNL simulator above) | replay (real behaviour: y = 1 iff the user consumed the exposed item)
    c.sim.replay_horizon = 0          # replay: also count the user's next N consumed items as a click

    # --- loss (ABPO; GRPO when anchor=off) -------------------------------------------------
    c.loss = ml_collections.ConfigDict()
    c.loss.num_generations = 8        # G rollouts per prompt
    c.loss.anchor = "full"            # off | baseline_only | full
    c.loss.snips = "on"               # on | off
    c.loss.snips_clip = 10.0          # w_max
    c.loss.tempering = "one_minus_c"  # one | one_minus_c | c | threshold
    c.loss.tempering_threshold = 0.5  # tau for threshold
    c.loss.tempering_on = "advantage"  # advantage (A <- g(c) A for a no-response's A < 0) | reward (u = -lambda g(c) before the baseline; 2026-12-01 reading)
    c.loss.positive_reward = 1.0      # r+
    c.loss.negative_scale = 1.0       # lambda
    c.loss.certainty_tokens = "item"  # item (item-id span) | completion (all tokens)
    c.loss.certainty_norm = "round"   # batch | round (CDF over the round's logged anchors) | running
    c.loss.std = "none"               # none | population | bessel
    c.loss.eps = 1e-4
    c.loss.epsilon_low = 0.2
    c.loss.epsilon_high = 0.2
    c.loss.beta = 0.04                # KL coefficient
    c.loss.kl_estimator = "k3"        # k1 | k3
    c.loss.aggregation = "token_mean"  # token_mean | sequence_mean | constant
    c.loss.max_completion_length = 16  # normaliser for aggregation=constant
    c.loss.rewards = ("format", "outcome")  # summed reward sources, for rollouts and anchor alike
    c.loss.kl_ratio_correction = False  # multiply the per-token KL by the PPO ratio (TRL use_bias_correction_kl)
    c.loss.unobserved_reward = "snips_value"  # outcome of a rollout naming another item: zero | snips_value
    c.loss.anchor_rewards = "all"     # all (same sources as the rollouts) | outcome (anchor: outcome only; ablation)
    c.loss.importance_ratio = "log"   # SNIPS w: log (exp(log pi_old - log p), mean by logsumexp) | floored (pi_old / max(p, 1e-6))
    c.loss.advantage_baseline = "group"  # group (centre on the group's mean) | constant (A = R - baseline_value: BanditNet)
    c.loss.baseline_value = 0.1       # lambda_b of advantage_baseline=constant
    c.loss.text_logprobs = "procedure"  # text mode: ratio, KL and anchor term on the sampling procedure's log-probs | model (temperature 1, unconstrained: TRL's)
    c.loss.kl_tokens = "rollouts"     # KL normalised over rollout tokens | all (rollouts + anchor; ablation)
    c.loss.format_rewards = ("tag_presence", "tag_count", "only_expected_tags")  # text mode with free text: the format source
    # --- optimisation ---------------------------------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.optimizer = "adamw"       # adamw | sgd
    c.train.learning_rate = 1e-5
    c.train.warmup_steps = 0
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.batch_size = 8            # prompts per step (global)
    c.train.grad_accum = 1
    c.train.epochs_per_round = 1
    c.train.sft_steps = 100           # round-0 warm start
    c.train.sft_learning_rate = 1e-4
    c.train.schedule = "constant"     # constant | cosine (linear warmup, then cosine decay)
    c.train.steps_per_round = 0       # 0 = one pass (epochs_per_round) over the round's log
    c.train.reset_optimizer = True    # fresh optimizer state at the start of each round update
    c.train.ppo_epochs = 1            # mu: updates per batch (1: pi_old from the gradient's own forward)
    # log pi~_ref of the policy step (beta > 0): log = the deploy-time log pi~ each item-mode record
    # carries (records.POLICY_LOGP), used only where it is exactly pi_ref's (rounds.reference=previous,
    # a logging policy that deploys pi_{k-1}; experiment.ref_logp_from_log), saving one forward of the
    # step's ~4; forward = a no-grad pi_ref forward every step (the former program; text mode always)
    c.train.ref_logp = "log"          # log | forward
    c.train.compile_cache_dir = ""    # JAX persistent compilation cache: "" = <run_dir>/jax_cache; off
    c.train.compile_cache_min_secs = 0.0  # cache programs that took at least this long to compile

    # --- continual rounds ----------------------------------------------------------------
    c.rounds = ml_collections.ConfigDict()
    c.rounds.num_rounds = 3
    c.rounds.split = "users"          # users (one request per fresh user, data.users_per_round) | events (every interaction event is a request)
    c.rounds.warm_fraction = 0.5      # events: share of the timeline (by event count) in the warm period
    c.rounds.requests_per_round = 0   # events: requests sampled from each window (0 = all its events)
    c.rounds.eval_requests = 2000     # events: requests sampled from the test / next window for held-out metrics (0 = all)
    c.rounds.methods = ("abpo", "abpo_no_snips", "abpo_no_tempering", "abpo_baseline_only",
                        "grpo", "sft_positive", "no_update")
    c.methods = ml_collections.ConfigDict(
        {name: {"kind": kind, **overrides} for name, (kind, overrides) in METHOD_TABLE.items()})

    # --- closed-loop study (`abpo-jax study`) ------------------------------------------------
    c.study = ml_collections.ConfigDict()
    c.study.dir = ""                  # default <run_dir>/study
    c.study.seeds = 5                 # seeds seed, seed + 1, ...
    c.study.conditions = ("base:",)   # "name:field=value,field=value" (overrides per condition)
    c.study.report_only = False       # summarize the finished cells only (e.g. of a running study)
    c.study.tuning = ml_collections.ConfigDict()   # equal tuning budgets (study/tuning.py); () = field not tuned
    c.study.tuning.learning_rate = ()  # train.learning_rate grid (every method that updates)
    c.study.tuning.beta = ()          # loss.beta grid (policy-gradient methods with rollouts)
    c.study.tuning.negative_scale = ()  # loss.negative_scale (lambda) grid
    c.study.tuning.baseline_value = ()  # loss.baseline_value (lambda_b) grid (banditnet)
    c.study.tuning.metric = "ndcg@5"  # chosen on this metric of the validation slice of users (rounds.split=users)
    c.study.tuning.select_on = ""     # rounds.split=events: the validation column ("" = valid_<metric>, the next window)
    c.study.tuning.seeds = 1          # tuning runs: seeds seed + 1000 + i (never a reported seed)
    c.study.tuning.condition = "base"  # the condition tuned on; its choices hold for every condition
    c.study.workers = 1               # cells run as this many local processes
    c.study.cell = -1                 # >= 0: run exactly cell K of the grid (SLURM array / k8s indexed Job), no report
    c.rounds.reference = "previous"   # previous (pi_ref = pi_{k-1}) | initial

    # --- evaluation ----------------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.ks = (1, 5, 10)
    c.eval.batch_size = 16
    c.eval.text_samples = 8           # text mode: sampled completions per test prompt (sibling protocol)
    c.eval.beam = 10                  # catalogue mode: constrained beam width K (HR@K / NDCG@K)

    # --- mesh / scale --------------------------------------------------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1                  # -1 = fill with the remaining devices
    c.mesh.tensor = 1
    c.mesh.rules = LOGICAL_AXIS_RULES  # logical axis -> mesh axes (read by models/sharding.py)

    # --- checkpoints and outputs ---------------------------------------------------------
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.max_to_keep = 3
    c.checkpoint.dir = ""             # default: <run_dir>/checkpoints (may be gs://...)
    c.checkpoint.every_steps = 0      # also checkpoint mid-update every N steps (0 = phase ends)
    c.checkpoint.resume_mismatch = "refuse"  # run_dir holds a run of another config: refuse | allow
    c.outputs = ml_collections.ConfigDict()
    c.outputs.progress = True         # tqdm bars (rollouts / steps / eval)
    c.outputs.tensorboard = True
    c.outputs.plots = True
    c.logs = ml_collections.ConfigDict()
    c.logs.max_bad_fraction = 0.05    # stop ingesting a round when more records are bad
    # `abpo-jax logs` (validate / import / export your own production logs)
    c.logs.dir = ""                   # default <run_dir>/logs
    c.logs.action = "summary"         # summary | validate | import | export | clean
    c.logs.input = ""                 # .jsonl / .csv to validate or import
    c.logs.output = ""                # .jsonl / .csv to export to
    c.logs.round = -1                 # round index; -1 = the records' own (import) / latest (export)
    c.logs.overwrite = False          # import: replace an already committed round
    c.logs.num_items = 0              # catalogue size for validation; 0 = only check 0 <= id < 2**63
    c.logs.num_users = 0              # user count for validation; 0 = only check 0 <= id < 2**63
    c.logs.max_record_bytes = 1 << 20  # larger encoded records are quarantined (too_large)
    c.logs.records_per_shard = 100_000

    # --- `abpo-jax recommend` ---------------------------------------------------------------
    c.recommend = ml_collections.ConfigDict()
    c.recommend.num_users = 3         # held-out test users to show
    c.recommend.method = ""           # whose weights: a rounds.methods entry; "" = the first

    # --- multi-host (TPU pods; see README "Running on TPU") ----------------------------------
    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"               # auto | on | off
    c.distributed.coordinator_address = ""    # host:port; env ABPO_COORDINATOR
    c.distributed.num_processes = 0           # 0 = unset; env ABPO_NUM_PROCESSES
    c.distributed.process_id = -1             # -1 = unset; env ABPO_PROCESS_ID
    c.distributed.initialization_timeout = 300
    return c


# Field path -> allowed values. One table, so the error names field and choices uniformly.
CHOICES: dict[str, tuple[Any, ...]] = {
    "checkpoint.resume_mismatch": ("refuse", "allow"),
    "data.dataset": ("ml-1m", "ml-100k", "amazon2018", "amazon2023"),
    "model.source": ("smollm2", "gemma3_270m", "hf", "gguf", "tiny"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat_policy": REMAT_POLICIES,
    "model.attention": ATTENTION_IMPLS,
    "model.matmul_precision": MATMUL_PRECISIONS,
    "model.attention_backend": ATTENTION_BACKENDS,
    "policy.mode": ("item", "text"),
    "policy.candidates": ("list", "catalogue"),
    "policy.item_text": ("id", "title"),
    "sim.preference": ("mf", "cooc"),
    "sim.feedback": ("mnl", "replay"),
    "rounds.split": ("users", "events"),
    "loss.anchor": ("off", "baseline_only", "full"),
    "loss.snips": ("on", "off"),
    "loss.tempering": ("one", "one_minus_c", "c", "threshold"),
    "loss.tempering_on": ("advantage", "reward"),
    "loss.importance_ratio": ("log", "floored"),
    "loss.advantage_baseline": ("group", "constant"),
    "loss.text_logprobs": ("procedure", "model"),
    "loss.certainty_tokens": ("item", "completion"),
    "loss.certainty_norm": ("batch", "round", "running"),
    "loss.unobserved_reward": ("zero", "snips_value"),
    "loss.anchor_rewards": ("all", "outcome"),
    "loss.kl_tokens": ("rollouts", "all"),
    "policy.logging_policy": ("current", "stale", "uniform"),
    "loss.std": ("none", "population", "bessel"),
    "loss.kl_estimator": ("k1", "k3"),
    "loss.aggregation": ("token_mean", "sequence_mean", "constant"),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("constant", "cosine"),
    "train.ref_logp": ("log", "forward"),
    "rounds.reference": ("previous", "initial"),
    "logs.action": ("summary", "validate", "import", "export", "clean"),
    "distributed.mode": ("auto", "on", "off"),
    "gee.judge_score": ("expected", "argmax"),
    "gee.ctr_window": ("cumulative", "round"),
    "gee.backend": ("smollm2", "scripted"),
}

_positive = (lambda v: v > 0, "> 0")
_non_negative = (lambda v: v >= 0, ">= 0")
_probability = (lambda v: 0 <= v <= 1, "in [0, 1]")
_mesh_axis = (lambda v: v == -1 or v >= 1, "-1 (fill) or >= 1")

# Field path -> (predicate, description of the allowed range).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.history_len": _positive,
    "data.num_candidates": (lambda v: v >= 2, ">= 2"),
    "data.k_core": _non_negative,
    "loss.num_generations": (lambda v: v >= 0, ">= 0 (0 only with loss.anchor='full': the "
                             "anchor alone, e.g. banditnet)"),
    "loss.snips_clip": _positive,
    "loss.eps": _non_negative,
    "loss.epsilon_low": (lambda v: 0 <= v < 1, "in [0, 1) (the ratio is clipped at 1 - epsilon_low)"),
    "loss.epsilon_high": _non_negative,
    "loss.beta": _non_negative,
    "loss.tempering_threshold": _probability,
    "sim.temperature": _positive,
    "sim.external_ignore": _probability,
    "policy.logging_temperature": _positive,
    "policy.logging_popularity": _non_negative,
    "policy.temperature": _non_negative,
    "policy.top_k": _non_negative,
    "policy.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "policy.max_think_tokens": _non_negative,
    "eval.text_samples": _positive,
    "eval.beam": _positive,
    "train.ppo_epochs": _positive,
    "study.seeds": _positive,
    "study.tuning.seeds": _positive,
    "study.workers": _positive,
    "study.cell": (lambda v: v >= -1, ">= -1 (-1 = every cell)"),
    "sim.replay_horizon": _non_negative,
    "rounds.warm_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "rounds.requests_per_round": _non_negative,
    "rounds.eval_requests": _non_negative,
    "train.learning_rate": _non_negative,
    "train.batch_size": _positive,
    "train.grad_accum": _positive,
    "train.sft_steps": _non_negative,
    "train.steps_per_round": _non_negative,
    "train.warmup_steps": _non_negative,
    "train.epochs_per_round": _positive,
    "checkpoint.max_to_keep": _positive,
    "checkpoint.every_steps": _non_negative,
    "data.num_test_users": _positive,
    "data.users_per_round": _positive,
    "rounds.num_rounds": _non_negative,
    "logs.max_bad_fraction": _probability,
    "logs.round": (lambda v: v >= -1, ">= -1 (-1 = automatic)"),
    "logs.num_items": _non_negative,
    "logs.num_users": _non_negative,
    "logs.max_record_bytes": _positive,
    "logs.records_per_shard": _positive,
    "data.max_users": _non_negative,
    "data.min_rating": _non_negative,
    "model.lora.rank": _non_negative,
    "eval.batch_size": _positive,
    "loss.max_completion_length": _positive,
    "sim.mf_dim": _positive,
    "recommend.num_users": _positive,
    "gee.temperature": _positive,
    "gee.pool_size": _positive,
    "gee.slate_size": _positive,
    "gee.interactions": _positive,
    "gee.rounds": _positive,
    "gee.max_per_topic": _positive,
    "gee.max_new_tokens": _positive,
    "gee.judge_batch_size": _positive,
    "gee.max_retries": _non_negative,
    "gee.num_personas": _non_negative,
    "gee.gen_temperature": _non_negative,
    "gee.random_ctr_max": _probability,
    "mesh.data": _mesh_axis,
    "mesh.fsdp": _mesh_axis,
    "mesh.tensor": _mesh_axis,
    "model.tiny.hidden": _positive,
    "model.tiny.layers": _positive,
    "model.tiny.heads": _positive,
    "model.tiny.kv_heads": _positive,
    "model.tiny.intermediate": _positive,
}

# Fields holding a tuple whose every element must come from a set.
TUPLE_CHOICES: dict[str, tuple[str, ...]] = {
    "loss.rewards": ("format", "outcome", "ground_truth", "simulator"),
    "loss.format_rewards": ("tag_presence", "tag_count", "only_expected_tags"),
    "gee.strategies": ("full-ctr", "partial-ctr", "random-ctr", "no-drop", "explore-exploit"),
}


def from_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (configs/ are files, not a package: a config starts
    from another with `from_file(pathlib.Path(__file__).with_name("tiny.py"))`)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"abpo_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _lookup(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


GGUF_MAGIC = b"GGUF"


def gguf_problem(path: str) -> str | None:
    """Why `path` cannot be a GGUF file (missing, a directory, wrong magic bytes), or None."""
    p = pathlib.Path(path)
    if not p.exists():
        return "does not exist"
    if not p.is_file():
        return "is not a file (a GGUF checkpoint is one .gguf file)"
    with open(p, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        return f"is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})"
    return None


def _check_model_path(config: ml_collections.ConfigDict) -> None:
    """model.source=hf|gguf reads config.model.path: it must exist and be of that kind."""
    source, path = config.model.get("source"), config.model.get("path", "")
    if source not in ("hf", "gguf"):
        return
    kind = ("a Hugging Face checkpoint directory (config.json + *.safetensors)" if source == "hf"
            else "a .gguf file")
    if not path:
        raise ConfigError(f"config.model.path is empty; config.model.source={source!r} needs {kind}")
    p = pathlib.Path(path).expanduser()
    if source == "hf" and not (p.is_dir() or (p.is_file() and p.suffix == ".safetensors")):
        why = "does not exist" if not p.exists() else "is not a directory or a .safetensors file"
        raise ConfigError(f"config.model.path={path!r} {why}; config.model.source='hf' needs {kind}")
    problem = gguf_problem(str(p)) if source == "gguf" else None
    if problem:
        raise ConfigError(f"config.model.path={path!r} {problem}; config.model.source='gguf' "
                          f"needs {kind}")


def _check_cross_fields(config: ml_collections.ConfigDict) -> None:
    """Checks that involve more than one field or a tuple's entries; each names the field."""
    found, tiny = _lookup(config, "model.tiny")
    if found and tiny.heads % tiny.kv_heads:
        raise ConfigError(f"config.model.tiny.heads={tiny.heads} is not a multiple of "
                          f"config.model.tiny.kv_heads={tiny.kv_heads} (each KV head serves a "
                          "whole group of query heads)")
    found, random_init = _lookup(config, "model.random_init")
    if found and random_init and config.model.get("source") != "hf":
        raise ConfigError(f"config.model.random_init=True needs config.model.source='hf' (a "
                          f"directory whose config.json gives the architecture), not "
                          f"{config.model.get('source')!r}")
    found, ks = _lookup(config, "eval.ks")
    if found and (not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                    for k in ks)):
        raise ConfigError(f"config.eval.ks={tuple(ks)!r} is out of range; it must be a non-empty "
                          "tuple of integers >= 1 (the K of HR@K / NDCG@K)")
    _check_policy_mode(config)
    _check_methods(config)


def _check_policy_mode(config: ml_collections.ConfigDict) -> None:
    """Text and catalogue mode: the combinations that are defined (DESIGN.md "Action space")."""
    found, policy = _lookup(config, "policy")
    if not found or "mode" not in policy:
        return
    text = policy.mode == "text"
    if policy.get("candidates") == "catalogue" and not text:
        raise ConfigError("config.policy.candidates='catalogue' needs config.policy.mode='text' "
                          "(the item is generated under a trie of the whole catalogue)")
    if text and policy.get("logging_policy") == "uniform":
        raise ConfigError("config.policy.logging_policy='uniform' is item mode only (1/C over the "
                          "candidate list); text mode logs the deployed policy's own samples")
    if text and policy.get("logging_popularity", 0.0):
        raise ConfigError(f"config.policy.logging_popularity={policy.logging_popularity} is "
                          "item mode only (a logit bias over the candidate list); set it to 0 "
                          "with config.policy.mode='text'")
    found_r, rewards = _lookup(config, "loss.rewards")
    if (text and policy.get("candidates") == "catalogue" and found_r
            and "simulator" in rewards):
        raise ConfigError("config.loss.rewards contains 'simulator', which catalogue mode cannot "
                          "give (the log carries the click probability of the exposed item "
                          "only); drop it or use config.policy.candidates='list'")
    found_m, model = _lookup(config, "model")
    if (policy.get("candidates") == "catalogue" and policy.get("item_text") == "title"
            and found_m and model.get("source") == "tiny"):
        raise ConfigError("config.policy.item_text='title' needs a pretrained model: the tiny "
                          "decoder's vocabulary is the item ids (config.model.source='tiny')")
    found_t, t = _lookup(config, "train")
    if text and found_t and (t.get("ppo_epochs", 1) != 1 or t.get("grad_accum", 1) != 1):
        raise ConfigError("config.train.ppo_epochs and config.train.grad_accum must be 1 with "
                          "config.policy.mode='text' (rollouts are sampled from the step's "
                          "own parameters, pi_old = pi_theta before the step)")


def _check_methods(config: ml_collections.ConfigDict) -> None:
    """Every `rounds.methods` entry names a `config.methods` entry whose overrides are loss
    fields with allowed values (unimplemented choices are rejected here, before any work)."""
    found, table = _lookup(config, "methods")
    found_m, methods = _lookup(config, "rounds.methods")
    if not (found and found_m):
        return
    for m in methods:
        if m not in table:
            raise ConfigError(f"config.rounds.methods contains {m!r}, which is not in "
                              "config.methods; choose from: " + ", ".join(table.keys()))
    for name, entry in table.items():
        if entry.get("kind") not in UPDATE_KINDS:
            raise ConfigError(f"config.methods.{name}.kind={entry.get('kind')!r} is not "
                              "allowed; choose one of: " + ", ".join(UPDATE_KINDS))
        for field, value in entry.items():
            if field == "kind" or field in METHOD_TRAIN_FIELDS:
                continue
            if field not in config.loss:
                raise ConfigError(f"config.methods.{name}.{field}: not a config.loss field")
            allowed = CHOICES.get(f"loss.{field}")
            if allowed is not None and value not in allowed:
                raise ConfigError(f"config.methods.{name}.{field}={value!r} is not allowed; "
                                  "choose one of: " + ", ".join(map(str, allowed)))
        if name in methods:
            _check_method_loss(config, name, entry)


def _check_method_loss(config: ml_collections.ConfigDict, name: str, entry: Any) -> None:
    """The loss a policy-gradient method runs (config.loss + its overrides) must be defined."""
    if entry.get("kind") != "policy_gradient" or "loss" not in config:
        return
    loss = {**config.loss.to_dict(), **method_loss_overrides(entry)}
    if loss.get("num_generations", 1) == 0:
        if loss.get("anchor") != "full":
            raise ConfigError(f"config.methods.{name}: num_generations=0 needs anchor='full' "
                              "(with no rollouts the anchor is all there is to learn from)")
        found, mode = _lookup(config, "policy.mode")
        if found and mode == "text":
            raise ConfigError(f"config.methods.{name}: num_generations=0 is item mode only "
                              "(config.policy.mode='text' samples G >= 1 rollouts per prompt)")


def method_loss_overrides(entry: Any) -> dict[str, Any]:
    """A `config.methods` entry's config.loss overrides (all but kind and its train fields)."""
    return {k: v for k, v in entry.items() if k != "kind" and k not in METHOD_TRAIN_FIELDS}


def method_losses(config: ml_collections.ConfigDict) -> dict[str, tuple[str, dict[str, Any]]]:
    """rounds.methods -> (update kind, loss overrides) from `config.methods`."""
    return {m: (config.methods[m].kind, method_loss_overrides(config.methods[m]))
            for m in config.rounds.methods}


def method_learning_rate(config: ml_collections.ConfigDict, method: str) -> float:
    """The method's update learning rate: its entry's own, else train.learning_rate."""
    return float(config.methods[method].get("learning_rate", config.train.learning_rate))


def validate(config: ml_collections.ConfigDict, files: bool = False) -> ml_collections.ConfigDict:
    """Check every known field present in `config`; raise ConfigError naming the first bad one.

    With `files=True` (the CLI) the files the config names are checked too (config.model.path
    exists and is a checkpoint of config.model.source's kind), so a wrong path fails before any
    work; without it a config for another machine still validates.
    """
    for path, allowed in CHOICES.items():
        found, value = _lookup(config, path)
        if found and value not in allowed:
            raise ConfigError(
                f"config.{path}={value!r} is not allowed; choose one of: "
                + ", ".join(map(str, allowed)))
    for path, (ok, desc) in RANGES.items():
        found, value = _lookup(config, path)
        if not found:
            continue
        try:
            good = not (isinstance(value, float) and math.isnan(value)) and ok(value)
        except TypeError:  # e.g. None or a string where a number belongs
            good = False
        if not good:
            raise ConfigError(f"config.{path}={value!r} is out of range; it must be {desc}")
    for path, allowed in TUPLE_CHOICES.items():
        found, value = _lookup(config, path)
        if not found:
            continue
        for v in value:
            if v not in allowed:
                raise ConfigError(
                    f"config.{path} contains {v!r}, which is not allowed; each entry must be "
                    "one of: " + ", ".join(allowed))
    _check_cross_fields(config)
    if files and "model" in config:
        _check_model_path(config)
    return config
