"""launch/colab_demo.ipynb runs headless (nbclient) on CPU, install skipped, demo on a tiny config.

Test-only dependencies: nbclient, nbformat, ipykernel.
"""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "launch" / "colab_demo.ipynb"
# a 1x1 PNG (what matters to the plots cell is only that it is a PNG file)
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def _load():
    return nbformat.read(NOTEBOOK, as_version=4)


def _tagged(nb, tag: str) -> int:
    hits = [i for i, c in enumerate(nb.cells) if tag in c.get("metadata", {}).get("tags", [])]
    assert len(hits) == 1, f"expected one cell tagged {tag!r}"
    return hits[0]


def _env(monkeypatch, run_dir: pathlib.Path, demo_args: str) -> None:
    monkeypatch.setenv("ABPO_NOTEBOOK_SKIP_INSTALL", "1")
    monkeypatch.setenv("ABPO_NOTEBOOK_RUN_DIR", str(run_dir))
    monkeypatch.setenv("ABPO_NOTEBOOK_DEMO_ARGS", demo_args)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # one CPU device, like a Colab CPU runtime (multi-device runs: tests/test_multihost.py)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")


def _outputs_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_notebook_is_valid_clean_and_ordered():
    nb = _load()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    order = [_tagged(nb, t) for t in ("parameters", "install", "devices", "demo", "plots")]
    assert order == sorted(order)
    # jax must not be imported before the install cell may replace it (jax[tpu])
    before_install = "".join(c.source for c in nb.cells[:order[1] + 1] if c.cell_type == "code")
    assert "import jax" not in before_install
    install = nb.cells[order[1]].source
    assert '"bash", "launch/install.sh"' in install and '["--tpu"] if on_tpu()' in install
    assert '"-m", "abpo_jax", "demo"' in nb.cells[order[3]].source


@pytest.mark.slow
def test_notebook_cells_run_and_plots_render(tmp_path, monkeypatch):
    """Every cell but the demo executes on CPU; the plots cell renders PNGs of the run dir."""
    _env(monkeypatch, tmp_path / "run", "--config.rounds.num_rounds=1")
    nb = _load()
    demo = _tagged(nb, "demo")
    (tmp_path / "run" / "plots").mkdir(parents=True)
    (tmp_path / "run" / "plots" / "metrics_per_round.png").write_bytes(PNG_1PX)
    (tmp_path / "run" / "not_a_plot.txt").write_text("x")
    nb.cells = [c for i, c in enumerate(nb.cells) if i != demo]
    # started in a subdirectory of the checkout: the notebook must find the checkout above it
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "launch")}})
    client.execute()
    cells = {t: nb.cells[_tagged(nb, t)] for t in ("install", "devices", "plots")}
    assert "ABPO_NOTEBOOK_SKIP_INSTALL=1" in _outputs_text(cells["install"])
    assert f"checkout: {ROOT}\n" in _outputs_text(cells["install"])
    assert "backend: cpu" in _outputs_text(cells["devices"])
    images = [o for o in cells["plots"].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1 and "metrics_per_round.png" in _outputs_text(cells["plots"])


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_with_tiny_demo(tmp_path, monkeypatch):
    if not (ROOT / "abpo_jax/train/rounds.py").exists() or not (ROOT / "configs/tiny.py").exists():
        pytest.skip("needs abpo_jax/train/rounds.py and configs/tiny.py (train engineer)")
    _env(monkeypatch, tmp_path / "run", " ".join([
        # round 0 only (SFT + evaluation): enough for a metrics row and its plots; the
        # continual rounds themselves are tested in tests/test_multihost.py and the train tests
        f"--config={ROOT / 'configs' / 'tiny.py'}", "--config.rounds.num_rounds=0",
        "\"--config.rounds.methods=('abpo', 'no_update')\"", "--config.data.max_users=200",
        "--config.data.users_per_round=16", "--config.data.num_test_users=16",
        "--config.train.batch_size=8", "--config.train.sft_steps=4", "--config.sim.mf_steps=20",
        "--config.eval.batch_size=16", "--config.outputs.progress=False"]))
    nb = _load()
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    plots = nb.cells[_tagged(nb, "plots")]
    assert any("image/png" in o.get("data", {}) for o in plots.outputs), _outputs_text(plots)
    assert list((tmp_path / "run").rglob("*.png"))


def _default_settings(monkeypatch) -> dict:
    """The settings cell run as a user runs it (no ABPO_* environment variables)."""
    for var in ("ABPO_REPO_URL", "ABPO_NOTEBOOK_RUN_DIR", "ABPO_NOTEBOOK_DEMO_ARGS",
                "ABPO_NOTEBOOK_SKIP_INSTALL"):
        monkeypatch.delenv(var, raising=False)
    namespace: dict = {}
    exec(_load().cells[_tagged(_load(), "parameters")].source, namespace)
    return namespace


def test_notebook_defaults_shrink_both_demo_parts_and_validate(monkeypatch, tmp_path):
    """Run-all as is: no placeholder URL to trip on, the size overrides reach the study (part 1)
    as well as the SmolLM2 rounds, and they validate (both parts) without running anything."""
    import subprocess
    import sys
    settings = _default_settings(monkeypatch)
    assert "<" not in settings["REPO_URL"]
    args = settings["DEMO_ARGS"]
    assert any(a.startswith("--config.demo.study.") for a in args)
    assert any(a.startswith("--config.data.") for a in args)
    out = subprocess.run([sys.executable, "-m", "abpo_jax", "demo", *args,
                          f"--config.run_dir={tmp_path / 'r'}", "--validate-only"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "config OK" in out.stdout, out.stderr
    bad = subprocess.run([sys.executable, "-m", "abpo_jax", "demo",
                          "--config.demo.study.loss.snips=maybe", "--validate-only"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "config.loss.snips='maybe'" in bad.stderr


def test_demo_run_dir_moves_the_study_too(monkeypatch, tmp_path):
    from abpo_jax import demo
    from abpo_jax.study import report, runner
    from abpo_jax.train import rounds
    from helpers import load_config
    seen = {}
    monkeypatch.setattr(runner, "main", lambda c: seen.setdefault("study", c.run_dir))
    monkeypatch.setattr(report, "beats_sentences", lambda study: [])
    monkeypatch.setattr(rounds, "main", lambda c: seen.setdefault("llm", c.run_dir))
    config = load_config("demo.py")
    config.run_dir = str(tmp_path / "elsewhere")
    demo.main(config)
    assert seen == {"study": str(tmp_path / "elsewhere"), "llm": str(tmp_path / "elsewhere")}
