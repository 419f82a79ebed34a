"""Grad-CAM / Grad-CAM++ heat maps of a trained student (code: foprokd_jax/cli/explain.py; docs/evaluation.md)."""

from foprokd_jax.cli.explain import run

if __name__ == "__main__":
    run()
