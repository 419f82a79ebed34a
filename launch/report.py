"""`python launch/report.py [flags]`: the same as `foprokd-report`; the code and its documentation are in
foprokd_jax/cli/report.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.report import run

if __name__ == "__main__":
    run()
