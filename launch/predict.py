"""`python launch/predict.py [flags]`: the same as `foprokd-predict`; the code and its documentation are in
foprokd_jax/cli/predict.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.predict import run

if __name__ == "__main__":
    run()
