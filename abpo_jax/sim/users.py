"""Simulated users: ground-truth preferences (BPR matrix factorisation or item co-occurrence)
and the GEE click model.

Preferences are fitted once on the FULL interaction data (train and held-out alike: the
simulator plays the real users) and cached as `.npz` keyed by a fingerprint of the data and the
settings. A raw score u.v_i + b_i is mapped to the GEE 1..10 scale through its quantiles over
random (user, item) pairs: score = 1 + 9 * F(raw), F the empirical CDF, so a random item scores
~5.5 on average and a user's own items ~9-10.

Click model (GEE, Senel et al. 2024), multinomial logit with an outside option:

    P(click q | shown A) = e^{r_q/T} / (e^{RS/T} + sum_{q' in A} e^{r_q'/T})

times (1 - external_ignore): with probability `external_ignore` the user does not respond for
a reason unrelated to the item, so a no-response is ambiguous. A logged request exposes one
item a, so P(y=1 | x, a) = (1 - e) * sigmoid((r_a - RS) / T), and a policy's true CTR on a
request is sum_c pi(c|x) P(y=1 | x, c).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_QUANTILES = 101


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["user_factors", "item_factors", "item_bias", "quantiles"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True, eq=False)
class Preferences:
    """Fitted ground truth: factors, item biases, and raw-score quantiles for the 1..10 map."""

    user_factors: np.ndarray   # float32 [U, d]
    item_factors: np.ndarray   # float32 [I, d]
    item_bias: np.ndarray      # float32 [I]
    quantiles: np.ndarray      # float32 [NUM_QUANTILES], increasing raw scores

    @property
    def num_users(self) -> int:
        return self.user_factors.shape[0]

    @property
    def num_items(self) -> int:
        return self.item_factors.shape[0]


def raw_scores(prefs: Preferences, users: jax.Array, items: jax.Array) -> jax.Array:
    """u_user . v_item + b_item, broadcasting `users` [...] against `items` [..., K]."""
    u = jnp.asarray(prefs.user_factors)[jnp.asarray(users)][..., None, :]
    v = jnp.asarray(prefs.item_factors)[jnp.asarray(items)]
    return jnp.sum(u * v, -1) + jnp.asarray(prefs.item_bias)[jnp.asarray(items)]


@jax.jit
def preference_scores(prefs: Preferences, users: jax.Array, items: jax.Array) -> jax.Array:
    """Scores on the GEE 1..10 scale: 1 + 9 * empirical CDF of the raw score. [..., K]."""
    levels = jnp.linspace(0.0, 1.0, NUM_QUANTILES)
    cdf = jnp.interp(raw_scores(prefs, users, items), jnp.asarray(prefs.quantiles), levels)
    return 1.0 + 9.0 * cdf


def mnl_click_probabilities(scores: jax.Array, temperature: float,
                            rejection_score: float) -> jax.Array:
    """GEE choice probabilities over a shown set plus the outside option.

    P(q) = e^{r_q/T} / (e^{RS/T} + sum_A e^{r/T}); P(none) = e^{RS/T} / (same).
    Args: scores [..., K]. Returns [..., K + 1], the no-click probability last.
    """
    scores = jnp.asarray(scores, jnp.float32)
    outside = jnp.full(scores.shape[:-1] + (1,), rejection_score, jnp.float32)
    return jax.nn.softmax(jnp.concatenate([scores, outside], -1) / temperature, axis=-1)


@jax.jit
def click_probability(scores: jax.Array, temperature: float, rejection_score: float,
                      external_ignore: float) -> jax.Array:
    """P(y=1) when each item is shown alone: (1 - e) * e^{r/T} / (e^{RS/T} + e^{r/T})."""
    scores = jnp.asarray(scores, jnp.float32)
    return (1.0 - external_ignore) * jax.nn.sigmoid((scores - rejection_score) / temperature)


def policy_ctr(policy_probs: jax.Array, item_click_probs: jax.Array) -> jax.Array:
    """True CTR per request of a policy: sum_c pi(c|x) P(y=1|x,c). Args [B, C]; returns [B]."""
    return jnp.sum(policy_probs * item_click_probs, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class UserSimulator:
    """Preferences + click-model settings; every method is vectorised over requests."""

    prefs: Preferences
    temperature: float = 1.5
    rejection_score: float = 11.0
    external_ignore: float = 0.0

    def scores(self, users: jax.Array, items: jax.Array) -> jax.Array:
        """1..10 scores of `items` [B, K] for `users` [B]."""
        return preference_scores(self.prefs, users, items)

    def click_probs(self, users: jax.Array, items: jax.Array) -> jax.Array:
        """P(y=1 | user, item shown alone), [B, K]."""
        return click_probability(self.scores(users, items), self.temperature,
                                 self.rejection_score, self.external_ignore)

    def slate_probs(self, users: jax.Array, slate: jax.Array) -> jax.Array:
        """Click distribution over a shown slate [B, K] + no click: [B, K + 1]."""
        probs = mnl_click_probabilities(self.scores(users, slate), self.temperature,
                                        self.rejection_score)
        respond = 1.0 - self.external_ignore
        return jnp.concatenate([probs[..., :-1] * respond,
                                1.0 - respond * (1.0 - probs[..., -1:])], -1)

    def sample_outcomes(self, key: jax.Array, users: jax.Array, items: jax.Array) -> jax.Array:
        """Outcome (1 click / 0 no response) of showing `items` [B] to `users` [B]: int32 [B]."""
        return _sample_outcomes(key, self.prefs, users, items, self.temperature,
                                self.rejection_score, self.external_ignore)

    def true_ctr(self, users: jax.Array, candidates: jax.Array,
                 policy_probs: jax.Array) -> jax.Array:
        """Mean true CTR of a policy with probabilities [B, C] over `candidates` [B, C]."""
        return jnp.mean(policy_ctr(policy_probs, self.click_probs(users, candidates)))


@jax.jit
def _sample_outcomes(key, prefs, users, items, temperature, rejection_score, external_ignore):
    scores = preference_scores(prefs, users, jnp.asarray(items)[:, None])[:, 0]
    p = click_probability(scores, temperature, rejection_score, external_ignore)
    return jax.random.bernoulli(key, p).astype(jnp.int32)


# --- fitting -----------------------------------------------------------------------------------

def _bpr_loss(params: dict[str, jax.Array], users, pos, neg, l2: float) -> jax.Array:
    """-mean log sigmoid(s(u, i+) - s(u, i-)) + l2 * mean squared norm of the touched factors."""
    u = params["user"][users]

    def score(items):
        return jnp.sum(u * params["item"][items], -1) + params["bias"][items]

    reg = (jnp.sum(u ** 2, -1) + jnp.sum(params["item"][pos] ** 2, -1)
           + jnp.sum(params["item"][neg] ** 2, -1))
    return -jnp.mean(jax.nn.log_sigmoid(score(pos) - score(neg))) + l2 * jnp.mean(reg)


@functools.partial(jax.jit, static_argnames=("num_users", "num_items", "dim", "steps",
                                             "batch_size"))
def _fit_bpr(key, user_ids, item_ids, *, num_users: int, num_items: int, dim: int, steps: int,
             batch_size: int, learning_rate: float, l2: float):
    k_user, k_item, k_steps = jax.random.split(key, 3)
    params = {"user": 0.1 * jax.random.normal(k_user, (num_users, dim)),
              "item": 0.1 * jax.random.normal(k_item, (num_items, dim)),
              "bias": jnp.zeros(num_items)}
    opt = optax.adam(learning_rate)

    def step(carry, i):
        params, opt_state = carry
        k_pos, k_neg = jax.random.split(jax.random.fold_in(k_steps, i))
        rows = jax.random.randint(k_pos, (batch_size,), 0, user_ids.shape[0])
        neg = jax.random.randint(k_neg, (batch_size,), 0, num_items)   # sampled negatives
        loss, grads = jax.value_and_grad(_bpr_loss)(params, user_ids[rows], item_ids[rows], neg,
                                                    l2)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return params, losses


def fit_preferences(user_ids: np.ndarray, item_ids: np.ndarray, num_users: int, num_items: int,
                    *, dim: int = 32, steps: int = 300, seed: int = 0, batch_size: int = 4096,
                    learning_rate: float = 0.05, l2: float = 1e-4) -> tuple[Preferences,
                                                                           np.ndarray]:
    """Fit BPR matrix factorisation on implicit feedback; return (preferences, loss per step)."""
    user_ids = np.asarray(user_ids, np.int32)
    item_ids = np.asarray(item_ids, np.int32)
    if user_ids.shape != item_ids.shape or user_ids.size == 0:
        raise ValueError(f"user_ids {user_ids.shape} and item_ids {item_ids.shape} must be "
                         "equal-length, non-empty interaction arrays")
    if user_ids.max() >= num_users or item_ids.max() >= num_items or min(user_ids.min(),
                                                                          item_ids.min()) < 0:
        raise ValueError("user/item ids must be dense indices in [0, num_users/num_items)")
    key = jax.random.PRNGKey(seed)
    params, losses = _fit_bpr(key, jnp.asarray(user_ids), jnp.asarray(item_ids),
                              num_users=num_users, num_items=num_items, dim=dim, steps=steps,
                              batch_size=batch_size, learning_rate=learning_rate, l2=l2)
    prefs = Preferences(np.asarray(params["user"], np.float32),
                        np.asarray(params["item"], np.float32),
                        np.asarray(params["bias"], np.float32), np.zeros(NUM_QUANTILES, np.float32))
    return _with_quantiles(prefs, seed), np.asarray(losses)


def _with_quantiles(prefs: Preferences, seed: int, n: int = 200_000) -> Preferences:
    """Set the 1..10 map: quantiles of raw scores over random (user, item) pairs."""
    rng = np.random.default_rng(seed)
    sample = raw_scores(prefs, rng.integers(0, prefs.num_users, n),
                        rng.integers(0, prefs.num_items, (n, 1)))
    quantiles = np.quantile(np.asarray(sample)[:, 0], np.linspace(0, 1, NUM_QUANTILES))
    return dataclasses.replace(prefs, quantiles=quantiles.astype(np.float32))


MAX_COOC_ITEMS = 12_000   # the co-occurrence matrix is dense [I, I] float32


def fit_cooccurrence(user_ids: np.ndarray, item_ids: np.ndarray, num_users: int,
                     num_items: int, *, dim: int = 32, seed: int = 0) -> Preferences:
    """Item co-occurrence preferences in factor form (no training).

    PPMI_ij = max(0, log(C_ij N / (c_i c_j))) with C = X^T X the co-occurrence counts of the
    binary user-item matrix X; item factors V = top-`dim` eigenvectors of PPMI scaled by
    sqrt(eigenvalue); a user's factor is the mean of V over the items they interacted with, so
    raw(u, i) = mean_{j in hist(u)} (V V^T)_ji, the rank-`dim` smoothed co-occurrence with the
    user's history.
    """
    if num_items > MAX_COOC_ITEMS:
        raise ValueError(f"sim.preference=cooc builds a dense [{num_items}, {num_items}] "
                         f"matrix; use sim.preference=mf above {MAX_COOC_ITEMS} items")
    x = np.zeros((num_users, num_items), np.float32)
    x[np.asarray(user_ids), np.asarray(item_ids)] = 1.0
    x = jnp.asarray(x)
    counts = x.T @ x
    pop = jnp.diag(counts)
    total = jnp.sum(pop)
    pmi = jnp.log(jnp.maximum(counts * total, 1e-12) / jnp.maximum(jnp.outer(pop, pop), 1e-12))
    ppmi = jnp.where(counts > 0, jnp.maximum(pmi, 0.0), 0.0) * (1.0 - jnp.eye(num_items))
    eigvals, eigvecs = jnp.linalg.eigh(ppmi)               # ascending
    top = slice(num_items - 1, max(num_items - 1 - dim, -1), -1)
    v = eigvecs[:, top] * jnp.sqrt(jnp.maximum(eigvals[top], 0.0))
    u = (x @ v) / jnp.maximum(jnp.sum(x, 1, keepdims=True), 1.0)
    prefs = Preferences(np.asarray(u, np.float32), np.asarray(v, np.float32),
                        np.zeros(num_items, np.float32), np.zeros(NUM_QUANTILES, np.float32))
    return _with_quantiles(prefs, seed)


def dataset_fingerprint(user_ids: np.ndarray, item_ids: np.ndarray, num_users: int,
                        num_items: int) -> str:
    """sha256 of the interaction arrays and sizes (the cache key's data part)."""
    h = hashlib.sha256(f"{num_users},{num_items}".encode())
    h.update(np.ascontiguousarray(user_ids, np.int32).tobytes())
    h.update(np.ascontiguousarray(item_ids, np.int32).tobytes())
    return h.hexdigest()


def load_or_fit_preferences(user_ids: np.ndarray, item_ids: np.ndarray, num_users: int,
                            num_items: int, *, cache_dir: str | os.PathLike | None,
                            method: str = "mf", **settings: Any) -> Preferences:
    """`fit_preferences` (mf) or `fit_cooccurrence` (cooc), cached in
    `<cache_dir>/prefs-<method>-<key>.npz` (atomic write).

    The key hashes the dataset fingerprint and every setting, so a changed dataset or setting
    never reuses a stale fit. `cache_dir=None` disables the cache.
    """
    def fit() -> Preferences:
        if method == "cooc":
            return fit_cooccurrence(user_ids, item_ids, num_users, num_items, **settings)
        return fit_preferences(user_ids, item_ids, num_users, num_items, **settings)[0]

    if method not in ("mf", "cooc"):
        raise ValueError(f"unknown preference method {method!r} (config sim.preference): "
                         "mf | cooc")
    if cache_dir is None:
        return fit()
    fingerprint = dataset_fingerprint(user_ids, item_ids, num_users, num_items)
    key = hashlib.sha256(json.dumps({"data": fingerprint, "method": method, **settings},
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = pathlib.Path(cache_dir) / f"prefs-{method}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return Preferences(z["user_factors"], z["item_factors"], z["item_bias"],
                                   z["quantiles"])
        except Exception as e:  # noqa: BLE001 — truncated / corrupt / foreign file: refit it
            from abpo_jax.data.datasets import DataWarning
            warnings.warn(DataWarning(f"{path}: unreadable simulator cache ({type(e).__name__}: "
                                      f"{str(e)[:120]}); refitting and overwriting it"))
    prefs = fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{k.name: getattr(prefs, k.name) for k in dataclasses.fields(prefs)})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return prefs


def simulator_from_config(config, user_ids: np.ndarray, item_ids: np.ndarray, num_users: int,
                          num_items: int, *, cache_dir: str | os.PathLike | None) -> UserSimulator:
    """UserSimulator from `config.sim` (preference, mf_dim -- also the cooc rank --, mf_steps,
    temperature, rejection_score, external_ignore) and `config.seed`."""
    settings = dict(dim=config.sim.mf_dim, seed=config.seed)
    if config.sim.preference == "mf":
        settings["steps"] = config.sim.mf_steps
    prefs = load_or_fit_preferences(user_ids, item_ids, num_users, num_items,
                                    cache_dir=cache_dir, method=config.sim.preference, **settings)
    return UserSimulator(prefs, temperature=config.sim.temperature,
                         rejection_score=config.sim.rejection_score,
                         external_ignore=config.sim.external_ignore)
