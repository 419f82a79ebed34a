"""`python launch/make_synthetic_isic.py [flags]`:
the same as `foprokd-make-synthetic-isic`; the code and its documentation are in
foprokd_jax/cli/make_synthetic_isic.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.make_synthetic_isic import run

if __name__ == "__main__":
    run()
