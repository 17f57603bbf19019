"""Huge pages for XLA:CPU's buffers: when a re-exec is wanted, the environment it gets, that
`ensure` really re-executes the command once with the tunable set, and that only the command
line's own entry (not a call from Python) does it."""

import os
import subprocess
import sys

import pytest

from abpo_jax import cli, host_memory


def test_tuned_environ_appends_and_is_then_not_wanted():
    env = host_memory.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + host_memory.TUNABLE
    assert env["X"] == "1"
    assert host_memory.tuned_environ({})["GLIBC_TUNABLES"] == host_memory.TUNABLE
    assert not host_memory.wanted(env)                        # set once: never again
    assert not host_memory.wanted({host_memory.SWITCH: "0"})  # switched off


def test_ensure_reexecutes_once_with_the_tunable():
    if not host_memory.wanted({}):
        pytest.skip("no glibc >= 2.35 with transparent huge pages here: nothing to re-exec")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.SWITCH)}
    probe = ("from abpo_jax import host_memory; host_memory.ensure(['abpo-jax', '--help']); "
             "print('returned')")
    # re-executed: the process becomes `python -m abpo_jax --help` (the usage, never 'returned')
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "returned" not in out.stdout and "abpo-jax <command>" in out.stdout
    # with the tunable already set it returns
    again = subprocess.run([sys.executable, "-c", probe], env=host_memory.tuned_environ(env),
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "returned"


def test_only_the_console_entry_reexecutes(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(host_memory, "ensure", lambda argv: calls.append(list(argv)))
    monkeypatch.setattr(sys, "argv", ["abpo-jax", "--help"])
    cli.run()
    assert calls == [["abpo-jax", "--help"]]
    cli.run(["abpo-jax", "--help"])                            # a call from Python: no exec
    assert len(calls) == 1
