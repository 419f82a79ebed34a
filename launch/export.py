"""`python launch/export.py [flags]`: the same as `foprokd-export`; the code and its documentation are in
foprokd_jax/cli/export.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.export import run

if __name__ == "__main__":
    run()
