"""`python launch/sweep.py [flags]`: the same as `foprokd-sweep`; the code and its documentation are in
foprokd_jax/cli/sweep.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.sweep import run

if __name__ == "__main__":
    run()
