"""`python launch/evaluate.py [flags]`: the same as `foprokd-evaluate`; the code and its documentation are in
foprokd_jax/cli/evaluate.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.evaluate import run

if __name__ == "__main__":
    run()
