"""`python launch/make_synthetic_dataset.py [flags]`:
the same as `foprokd-make-synthetic-dataset`; the code and its documentation are in
foprokd_jax/cli/make_synthetic_dataset.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.make_synthetic_dataset import run

if __name__ == "__main__":
    run()
