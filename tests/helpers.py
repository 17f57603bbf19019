"""Shared test helpers."""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_config(name: str):
    """`get_config()` of `configs/<name>` (the files are not a package)."""
    from abpo_jax.config import from_file
    return from_file(ROOT / "configs" / name)


def tiny_run_config(run_dir, methods=("abpo", "no_update")):
    """A continual-run config that runs in seconds: a 1-layer item-token decoder on 200 ML-1M
    users, 16 per round and 16 test users, C=6 (so hr@5 / ndcg@5 exist), one round."""
    from abpo_jax.config import base_config
    c = base_config()
    c.run_dir = str(run_dir)
    c.data.max_users = 200
    c.data.history_len = 3
    c.data.num_candidates = 6
    c.data.num_test_users = 16
    c.data.users_per_round = 16
    c.model.source = "tiny"
    c.model.tiny.hidden = 16
    c.model.tiny.layers = 1
    c.model.tiny.intermediate = 32
    c.loss.num_generations = 2
    c.train.batch_size = 8
    c.train.sft_steps = 2
    c.rounds.num_rounds = 1
    c.rounds.methods = tuple(methods)
    c.sim.mf_steps = 10
    c.eval.batch_size = 16
    c.outputs.progress = False
    return c



@functools.partial(jax.jit, static_argnums=0)
def _causal(graphdef, state, tokens):
    t = tokens.shape[1]
    logits, _ = nnx.merge(graphdef, state)(tokens, jnp.arange(t)[None],
                                            jnp.tril(jnp.ones((t, t), bool))[None])
    return logits


def causal_logits(model, tokens):
    """No-cache causal logits [B, T, V] of whole token sequences (no padding): the plain
    reference the samplers and scorers are checked against (jitted once per model shape)."""
    return _causal(*nnx.split(model), jnp.asarray(tokens))


def matmul_vjp_case(matmul, w_transposed: bool):
    """Random x [2, 5, 48], w [48, 40] ([40, 48] when `w_transposed`) and cotangent g
    [2, 5, 40], and `matmul(x, w, w_transposed)`'s (y, dx, dw) there."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 48))
    w = jax.random.normal(kw, (40, 48) if w_transposed else (48, 40))
    g = jax.random.normal(kg, (2, 5, 40))
    y, vjp = jax.vjp(lambda a, b: matmul(a, b, w_transposed), x, w)
    return (x, w, g), (y, *vjp(g))


def dense_products(x, w, g, w_transposed: bool):
    """Float64 NumPy (y, dx, dw) of x [..., K] @ w (w [N, K] when `w_transposed`), cotangent g."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    wm = w.T if w_transposed else w                                 # [K, N]
    dw = x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])   # [K, N]
    return x @ wm, g @ wm.T, dw.T if w_transposed else dw
