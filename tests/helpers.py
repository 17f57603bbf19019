"""Shared test helpers."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_config(name: str):
    """`get_config()` of `configs/<name>` (the files are not a package)."""
    path = ROOT / "configs" / name
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


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
