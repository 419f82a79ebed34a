"""`python launch/planted_band.py [flags]`: the same as `foprokd-planted-band`; the code and its documentation are in
foprokd_jax/cli/planted_band.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.planted_band import run

if __name__ == "__main__":
    run()
