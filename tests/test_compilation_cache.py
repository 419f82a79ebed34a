"""The persistent compilation cache: where it goes, that a second process loads the executable instead of
compiling, and that a bad --compilation_cache is a clear error with nothing written."""

import os
import subprocess
import sys

import jax
import pytest

from foprokd_jax import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Counts jax's cache hits/misses while compiling one small jitted function under `enable(sys.argv[1])`.
_CHILD = """
import sys
import jax, jax.numpy as jnp
from jax import monitoring
from foprokd_jax import compilation_cache
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print("DIR", compilation_cache.enable(None if sys.argv[1] == "DEFAULT" else sys.argv[1]))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + jnp.cos(x).mean())
f(jnp.ones((64, 64))).block_until_ready()
print("HITS", events.count("/jax/compilation_cache/cache_hits"),
      "MISSES", events.count("/jax/compilation_cache/cache_misses"))
"""


def _child(arg: str, **env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **env_extra)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, arg], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    words = " ".join(line for line in out.stdout.splitlines() if line.startswith(("DIR", "HITS"))).split()
    return {"dir": words[1], "hits": int(words[3]), "misses": int(words[5])}


def test_second_process_loads_the_executable_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = _child(str(cache))
    assert first["dir"] == str(cache) and first["misses"] >= 1 and first["hits"] == 0
    assert any(cache.iterdir()), "the first process wrote no cache entry"
    second = _child(str(cache))
    assert second["hits"] >= 1 and second["misses"] == 0


def test_default_directory_follows_env_then_xdg(tmp_path):
    via_env = _child(
        "DEFAULT", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "from_env"), XDG_CACHE_HOME=str(tmp_path / "xdg")
    )
    assert via_env["dir"] == str(tmp_path / "from_env")
    via_xdg = _child("DEFAULT", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert via_xdg["dir"] == str(tmp_path / "xdg" / "foprokd_jax" / "xla")
    assert any((tmp_path / "xdg" / "foprokd_jax" / "xla").iterdir())


def test_off_and_unusable_directories(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        assert compilation_cache.enable("") is None
        assert jax.config.jax_compilation_cache_dir is None
        a_file = tmp_path / "not_a_dir"
        a_file.write_text("x")
        with pytest.raises(ValueError, match="not_a_dir.*not a directory"):
            compilation_cache.enable(str(a_file))
        # An unusable *default* location only turns the cache off: training must not fail over a cache.
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(a_file))
        assert compilation_cache.enable(None) is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_cli_refuses_a_bad_cache_folder_before_writing_anything(tmp_path):
    a_file = tmp_path / "cache_file"
    a_file.write_text("x")
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "FOPROKD_FAULT"}
    env.update(JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "launch/train.py", f"--workdir={workdir}", f"--compilation_cache={a_file}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"error: --compilation_cache={a_file}: it exists and is not a directory" in out.stderr
    assert not workdir.exists()
