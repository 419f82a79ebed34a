"""Faster XLA:CPU convolution defaults, set in XLA_FLAGS before JAX starts its backend.

On the project's CPU machines (docs/performance.md) the ResNet steps run
faster when XLA:CPU does not hand forward convolutions to YNNPACK (jaxlib 0.10's default) and may instead
use its oneDNN custom-call rewriter:

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution   (the '-' removes one default item)
    --xla_cpu_experimental_onednn_custom_call=true

Call `apply_cpu_defaults()` at the top of an entry point, before the first JAX computation (anything that
creates a device array or compiles). Importing jax first is fine; XLA reads XLA_FLAGS once, when JAX
creates its backends, and a later change has no effect in this process (the function then refuses and
says so). Rules:

* Only when the run will be CPU-only: JAX_PLATFORMS (or jax's `jax_platforms` config) starts with 'cpu',
  or it is unset and no accelerator plugin (CUDA/ROCm PJRT plugin, libtpu) is installed. The flags only
  touch the CPU compiler; the jax 0.10.2 CUDA plugin also registers both names, so they would not abort a
  GPU process either, but there is nothing to gain there.
* The user's own choice wins: if XLA_FLAGS already names either flag, nothing is added (the two only make
  sense together: `onednn_custom_call` alone does nothing while YNNPACK claims the convolutions).
* FOPROKD_XLA_CPU_DEFAULTS=0 turns the whole thing off.
* Only flags the installed jaxlib knows are set: XLA aborts the process on an unknown XLA_FLAGS entry, so
  a jaxlib that dropped these experimental flags gets none.

Measured effect and the numerical check against default flags: docs/performance.md, tests/test_xla_flags.py.
"""

import glob
import importlib.util
import logging
import mmap
import os
import re
import sys
from typing import Mapping, MutableMapping, Optional, Sequence

CPU_DEFAULT_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "--xla_cpu_experimental_onednn_custom_call=true",
)
OPT_OUT_ENV = "FOPROKD_XLA_CPU_DEFAULTS"
# Importable modules whose presence means JAX will pick an accelerator by default.
ACCELERATOR_MODULES = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
    "jax_plugins.xla_cuda12",
    "jax_plugins.xla_cuda13",
    "jax_plugins.xla_rocm60",
    "jax_plugins.xla_rocm7",
    "jax_plugins.xla_tpu",
)


def flag_name(flag: str) -> str:
    """'--xla_foo=1' -> 'xla_foo' (also '--noxla_foo' -> 'xla_foo', the boolean negation form)."""
    name = flag.lstrip("-").split("=", 1)[0]
    return name[2:] if name.startswith("noxla_") else name


def flag_names(xla_flags: str) -> set:
    """The flag names an XLA_FLAGS string sets (whitespace-separated '--name[=value]' items)."""
    return {flag_name(item) for item in xla_flags.split() if item.startswith("-")}


def merge_flags(existing: str, defaults: Sequence[str] = CPU_DEFAULT_FLAGS) -> str:
    """`existing` with `defaults` appended, unless `existing` already names any of them (then unchanged).

    The defaults are one unit: a user who set one of them chose their own convolution backend.
    """
    if flag_names(existing) & {flag_name(f) for f in defaults}:
        return existing
    return " ".join([existing.strip(), *defaults]).strip()


def accelerator_plugin_installed() -> bool:
    """Whether a CUDA/ROCm PJRT plugin or libtpu is importable (JAX would then default to it)."""
    for module in ACCELERATOR_MODULES:
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):  # a parent package that is missing or half-installed
            continue
    return False


def will_be_cpu(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether JAX's default backend will be the CPU in this process.

    JAX_PLATFORMS decides when set (for this process, also an already-imported jax's `jax_platforms`
    config): its first entry is the default backend. Unset, the CPU is the default exactly when no
    accelerator plugin is installed. An explicit `environ` is judged on its own (jax's config not read).
    """
    env = os.environ if environ is None else environ
    platforms = env.get("JAX_PLATFORMS", "")
    if not platforms and environ is None and "jax" in sys.modules:  # this process: jax.config may say
        platforms = getattr(sys.modules["jax"].config, "jax_platforms", None) or ""
    if platforms.strip():
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not accelerator_plugin_installed()


def backends_initialized() -> bool:
    """Whether JAX has already created its backends (XLA_FLAGS has then been read for this process)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # private, but stable since 2022; absent means "cannot tell"

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def jaxlib_knows_flags(defaults: Sequence[str] = CPU_DEFAULT_FLAGS) -> bool:
    """Whether the installed jaxlib registers every flag name (XLA aborts on unknown XLA_FLAGS entries).

    The names are looked up in jaxlib's shared libraries (memory-mapped; ~0.1 s), without starting XLA.
    """
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    wanted = [flag_name(f).encode() for f in defaults]
    libraries = [
        path
        for location in spec.submodule_search_locations
        for path in glob.glob(os.path.join(location, "**", "*.so"), recursive=True)
    ]
    for path in sorted(libraries, key=os.path.getsize, reverse=True):  # the flag registry is the big one
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if all(data.find(name) >= 0 for name in wanted):
                    return True
        except (OSError, ValueError):  # unreadable or empty file
            continue
    return False


def apply_cpu_defaults(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Appends CPU_DEFAULT_FLAGS to XLA_FLAGS when they apply (see the module docstring); True if it did.

    Must run before the first JAX computation. Safe to call more than once and on any machine: on a GPU/TPU
    machine, with the opt-out set, or when the user already chose these flags it changes nothing.
    """
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    existing = env.get("XLA_FLAGS", "")
    merged = merge_flags(existing)
    if merged == existing or not will_be_cpu(env):
        return False
    if environ is None and backends_initialized():
        logging.warning(
            "apply_cpu_defaults() called after JAX initialised its backends; XLA_FLAGS is "
            "already read, so the CPU convolution defaults are not applied. Call it first."
        )
        return False
    if not jaxlib_knows_flags():
        logging.warning(
            "The installed jaxlib does not know %s; CPU convolution defaults not applied.", " ".join(CPU_DEFAULT_FLAGS)
        )
        return False
    env["XLA_FLAGS"] = merged
    return True


_COMPUTATION_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_CONVOLUTION = re.compile(r"\sconvolution\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def count_conv_backends(optimized_hlo: str) -> dict:
    """Which library runs each convolution of a compiled XLA:CPU module (`jitted.lower(...).compile().as_text()`).

    Returns counts of convolution instructions: 'ynnpack' (inside `__ynn_fusion` fusions; a YNN 'reduce'
    fusion can hold several convolutions feeding a reduction), 'onednn' (`__onednn$convolution` custom
    calls) and 'eigen' (every other `convolution` instruction, which XLA:CPU runs with Eigen).
    """
    bodies, current = {}, None
    for line in optimized_hlo.splitlines():
        header = _COMPUTATION_HEADER.match(line.strip())
        if header and " = " not in line:
            current = header.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    convs = {name: sum(1 for line in lines if _CONVOLUTION.search(line)) for name, lines in bodies.items()}
    ynn_bodies = set()
    for lines in bodies.values():
        for line in lines:
            called = _CALLS.search(line)
            if '"__ynn_fusion"' in line and called and convs.get(called.group(1)):
                ynn_bodies.add(called.group(1))
    onednn = sum(1 for line in optimized_hlo.splitlines() if "__onednn$convolution" in line)
    return {
        "ynnpack": sum(convs[name] for name in ynn_bodies),
        "onednn": onednn,
        "eigen": sum(n for name, n in convs.items() if name not in ynn_bodies),
    }
