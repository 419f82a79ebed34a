"""`python launch/train.py [flags]`: the same as `foprokd-train`; the code and its documentation are in
foprokd_jax/cli/train.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.train import run

if __name__ == "__main__":
    run()
