"""`pip install .` gives a working tool: the wheel's contents and metadata, and `abpo-jax data`
run from the installed wheel alone.

What the wheel test proves: the wheel built from this tree (no network: no build isolation)
holds every `abpo_jax` subpackage, the shipped configs and benchmarks, the `abpo-jax` console
script and the runtime pins of requirements.txt (with `[test]` / `[tpu]` extras); installed into
a fresh venv (`--no-deps`), `abpo-jax data` and `--config=tiny` (a shipped config by name) run
from outside the checkout, importing abpo_jax from that venv. What it does not prove: that pip
resolves the pins from PyPI (the venv borrows this environment's installed stack through a
path file instead of downloading it), which `launch/install.sh` does on every CI run.
"""

import os
import pathlib
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins(name: str) -> list[str]:
    """Requirement lines of a requirements file, comments stripped."""
    lines = (REPO / name).read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def test_package_list_covers_every_subpackage_and_the_configs():
    setuptools = pytest.importorskip("setuptools")
    tool = _pyproject()["tool"]["setuptools"]
    found = set(setuptools.find_packages(str(REPO), include=["abpo_jax*"]))
    listed = set(tool["packages"])
    assert found - listed == set(), "add the new subpackage to pyproject.toml's packages"
    assert listed - found == {"abpo_jax.configs", "abpo_jax.benchmarks"}
    assert tool["package-dir"] == {"abpo_jax.configs": "configs",
                                   "abpo_jax.benchmarks": "benchmarks"}


def test_tpu_extra_pins_the_same_jax():
    jax = next(p for p in _pins("requirements.txt") if p.startswith("jax=="))
    tpu = _pins("requirements-tpu.txt")
    assert tpu == [f"jax[tpu]=={jax.split('==')[1]}"]


def test_wheel_installs_and_runs_abpo_jax_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                    "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist")],
                   check=True, env=env, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("abpo_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("abpo_jax/cli.py", "abpo_jax/train/rounds.py", "abpo_jax/configs/tiny.py",
              "abpo_jax/configs/demo.py", "abpo_jax/benchmarks/bench_losses.py"):
        assert f in names, f
    assert not any(n.startswith(("tests/", "configs/", "runs/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = re.findall(r"^Requires-Dist: (.+)$", meta, re.M)
    runtime = [r for r in requires if "extra ==" not in r]
    assert len(runtime) == len(_pins("requirements.txt")) and "jax==0.10.2" in runtime
    assert {"test", "tpu"} <= set(re.findall(r"^Provides-Extra: (\S+)$", meta, re.M))
    entry = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "abpo-jax = abpo_jax.cli:run" in entry

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the runtime stack of this environment, appended after the venv's own site-packages (a
    # path line: this environment's editable abpo_jax hook is not loaded)
    stack = [p for p in sys.path if p.endswith("site-packages")]
    pathlib.Path(site, "_borrowed_stack.pth").write_text("\n".join(stack) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, env=env, timeout=300, capture_output=True)
    run_env = {**env, "JAX_PLATFORMS": "cpu"}
    where = subprocess.run([str(py), "-c", "import abpo_jax; print(abpo_jax.__file__)"],
                           cwd=tmp_path, env=run_env, check=True, capture_output=True,
                           text=True).stdout
    assert where.startswith(str(venv)), where     # the wheel's copy, not the checkout
    for args, expect in ((["data"], "3,706"), (["data", "--config=tiny"], "<history>")):
        out = subprocess.run([str(venv / "bin" / "abpo-jax"), *args], cwd=tmp_path,
                             env=run_env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert expect in out.stdout
    out = subprocess.run([str(venv / "bin" / "abpo-jax"), "train", "--config=tiny",
                          "--validate-only"], cwd=tmp_path, env=run_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "config OK" in out.stdout, out.stderr
    assert "abpo_jax/configs/tiny.py" in out.stdout
