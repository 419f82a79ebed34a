"""`--config=configs/<name>.py[:args]` from anywhere: the experiment configs ship with the package.

In a clone, `configs/isic.py` is a path relative to the repository root. After `pip install`, the same spelling
works from any folder: a `configs/...` path that does not exist relative to the working directory is looked up
in the installed `configs` package. A path that exists is always used as given (your own config files).
"""

import os

import configs

INSTALLED_CONFIGS = os.path.dirname(os.path.abspath(configs.__file__))


def resolve(spec: str) -> str:
    """`path[:args]` with `path` replaced by the installed config file when only that one exists."""
    path, sep, args = spec.partition(":")
    parts = os.path.normpath(path).split(os.sep)
    if os.path.exists(path) or len(parts) != 2 or parts[0] != "configs":
        return spec
    installed = os.path.join(INSTALLED_CONFIGS, parts[1])
    return f"{installed}{sep}{args}" if os.path.exists(installed) else spec


def resolve_argv(argv, flag: str = "config") -> list:
    """argv with the value of `--<flag>=...` (or `--<flag> ...`) passed through `resolve`."""
    out, argv = [], list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            arg = f"--{flag}=" + resolve(arg.split("=", 1)[1])
        elif i > 0 and argv[i - 1] == f"--{flag}":
            arg = resolve(arg)
        out.append(arg)
    return out


DEMO_CONFIG = os.path.join(INSTALLED_CONFIGS, "demo.py")
