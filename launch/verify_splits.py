"""`python launch/verify_splits.py --split_dir=...`: the same as `foprokd-verify-splits`; the code and its documentation
are in foprokd_jax/cli/verify_splits.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.verify_splits import run

if __name__ == "__main__":
    run()
