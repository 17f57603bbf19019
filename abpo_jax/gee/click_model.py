"""GEE user-click simulator: multinomial logit over the shown items with an outside option.

A simulated interaction draws a persona p, shows a slate A of K items drawn uniformly without
replacement from the pool, and the persona clicks item q in A with probability

    P(q | p, A) = exp(r_qp / T) / (exp(RS / T) + sum_{q' in A} exp(r_q'p / T))

or clicks nothing with probability exp(RS / T) / (same denominator), where r_qp in [1, 10] is the
judge's relevance score, T the temperature and RS the rejection (outside-option) score
(Senel et al., ACL 2024). Everything here is pure: arrays in, arrays out.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from abpo_jax.sim.users import mnl_click_probabilities

NO_CLICK = -1  # `clicked` value for an interaction that ended without a click


# One MNL click model for the project: the simulator's (float32, jax.numpy).
click_probabilities = mnl_click_probabilities


def _pad_bucket(n: int) -> int:
    """Pool capacity the simulator is compiled for: 8, 16, 32, ... (one compile per bucket)."""
    return max(8, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("num_interactions", "slate_size"))
def _simulate(key, scores, n_items, persona_weights, *, num_interactions, slate_size,
              temperature, rejection_score):
    k_persona, k_slate, k_click = jax.random.split(key, 3)
    persona = jax.random.categorical(k_persona, jnp.log(persona_weights),
                                     shape=(num_interactions,))
    # Top-K of i.i.d. uniforms is a uniform K-subset without replacement; padded rows get -1
    # so they are never shown.
    noise = jax.random.uniform(k_slate, (num_interactions, scores.shape[0]))
    noise = jnp.where(jnp.arange(scores.shape[0]) < n_items, noise, -1.0)
    _, shown = jax.lax.top_k(noise, slate_size)
    slate_scores = scores[shown, persona[:, None]]                       # [S, K]
    probs = click_probabilities(slate_scores, temperature, rejection_score)
    choice = jax.random.categorical(k_click, jnp.log(probs), axis=-1)    # [S] in 0..K
    clicked_slot = jnp.clip(choice, 0, slate_size - 1)
    clicked = jnp.where(choice == slate_size, NO_CLICK,
                        jnp.take_along_axis(shown, clicked_slot[:, None], 1)[:, 0])
    return {"persona": persona, "shown": shown, "clicked": clicked}


def simulate_interactions(key: jax.Array, scores, persona_weights, *, num_interactions: int,
                          slate_size: int, temperature: float,
                          rejection_score: float) -> dict[str, jax.Array]:
    """Draw S interactions of the population with a pool, all at once (one jitted call).

    Args:
      key: PRNG key of this round.
      scores: [N, P] relevance of pool item n for persona p.
      persona_weights: [P] population shares (need not be normalised).
      num_interactions: S.
      slate_size: K items shown per interaction (uniform K-subset of the N pool items).
    Returns:
      persona [S] int, shown [S, K] pool indices, clicked [S] pool index or NO_CLICK.
    """
    scores = np.asarray(scores, np.float32)   # padding on the host: no per-shape device ops
    n_items = scores.shape[0]
    if not 1 <= slate_size <= n_items:
        raise ValueError(f"slate_size={slate_size} must be in [1, pool size={n_items}]")
    padded = np.zeros((_pad_bucket(n_items), scores.shape[1]), np.float32)
    padded[:n_items] = scores
    return _simulate(key, padded, n_items, np.asarray(persona_weights, np.float32),
                     num_interactions=num_interactions, slate_size=slate_size,
                     temperature=temperature, rejection_score=rejection_score)


def item_counts(shown: np.ndarray, clicked: np.ndarray, n_items: int) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Per-item (clicks, impressions) from simulated interactions."""
    impressions = np.bincount(np.asarray(shown).ravel(), minlength=n_items)
    clicked = np.asarray(clicked)
    clicks = np.bincount(clicked[clicked != NO_CLICK], minlength=n_items)
    return clicks.astype(np.int64), impressions.astype(np.int64)


def expected_ctr(scores: np.ndarray, persona_weights: np.ndarray, *, slate_size: int,
                 temperature: float, rejection_score: float) -> tuple[float, np.ndarray]:
    """Analytic expectation of the simulator by enumerating every K-subset of the pool.

    Returns:
      (pool CTR = P(an interaction ends in a click),
       [N] item CTR = P(item clicked | item shown)).
    """
    scores = np.asarray(scores, np.float64)
    n_items = scores.shape[0]
    w = np.asarray(persona_weights, np.float64)
    w = w / w.sum()
    subsets = np.array(list(itertools.combinations(range(n_items), slate_size)))  # [M, K]
    probs = np.asarray(click_probabilities(scores[subsets].transpose(0, 2, 1),  # [M, P, K]
                                           temperature, rejection_score), np.float64)
    probs = np.einsum("mpk,p->mk", probs, w)                                      # [M, K+1]
    pool_ctr = float(1.0 - probs[:, -1].mean())
    item_clicks = np.zeros(n_items)
    np.add.at(item_clicks, subsets.ravel(), probs[:, :-1].ravel())
    shown_count = len(subsets) * slate_size / n_items   # subsets containing each item
    return pool_ctr, item_clicks / shown_count
