"""JAX's persistent compilation cache, on by default for the training entry point.

Compiling the full-size train step costs 10-50 s on a CPU (docs/performance.md) and a few seconds to a
minute on an accelerator, and every resume, rerun, fold and seed of a sweep compiles the same program again.
With the cache, XLA's executable is written once to disk and later processes load it: the EKD step at
112 px, batch 32, compiled in 9.1 s cold and 2.1 s from the cache on this project's 2-core CPU (the rest is
tracing). The cache key covers the program, the jax/jaxlib version, the devices and the XLA flags, so a
hit is the executable the process would have compiled itself.

Where the cache lives, first match wins:
    --compilation_cache=DIR          (launch/train.py; '' turns the cache off)
    $JAX_COMPILATION_CACHE_DIR       (jax's own variable; launch/sweep.py sets it for its runs)
    $XDG_CACHE_HOME/foprokd_jax/xla  (default ~/.cache/foprokd_jax/xla)
"""

from __future__ import annotations

import os
from typing import Optional

from absl import logging

ENV_VAR = "JAX_COMPILATION_CACHE_DIR"


def default_directory() -> str:
    """`$XDG_CACHE_HOME/foprokd_jax/xla`, or `~/.cache/foprokd_jax/xla`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "foprokd_jax", "xla")


def _usable_directory(path: str) -> Optional[str]:
    """Why `path` cannot hold the cache (None when it can); creates it if missing."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "it exists and is not a directory"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        return f"it cannot be created ({error.strerror or error})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def enable(directory: Optional[str] = None) -> Optional[str]:
    """Turns the persistent compilation cache on; returns its directory, or None when it stays off.

    directory: an explicit folder (an unusable one raises ValueError naming it: the user asked for it),
    '' for no cache, or None for the default chain above (an unusable default folder only logs a warning:
    training works without a cache, just with slower first steps).
    Call before the first compilation: jax decides once per process, at its first compile, whether a
    cache is in use.
    """
    import jax

    if directory == "":
        jax.config.update("jax_compilation_cache_dir", None)
        logging.info("Persistent compilation cache: off (--compilation_cache='')")
        return None
    explicit = directory is not None
    if not explicit:
        directory = os.environ.get(ENV_VAR) or default_directory()
    path = os.path.abspath(os.path.expanduser(directory))
    problem = _usable_directory(path)
    if problem is not None:
        if explicit:
            raise ValueError(
                f"--compilation_cache={directory}: {problem}. Give a writable folder, or '' to "
                "train without the persistent compilation cache."
            )
        logging.warning("Persistent compilation cache off: %s: %s", path, problem)
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    logging.info("Persistent compilation cache: %s", path)
    return path
