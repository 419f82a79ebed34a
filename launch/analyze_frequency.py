"""`python launch/analyze_frequency.py [flags]`:
the same as `foprokd-analyze-frequency`; the code and its documentation are in
foprokd_jax/cli/analyze_frequency.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.analyze_frequency import run

if __name__ == "__main__":
    run()
