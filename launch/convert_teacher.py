"""`python launch/convert_teacher.py [flags]`:
the same as `foprokd-convert-teacher`; the code and its documentation are in
foprokd_jax/cli/convert_teacher.py (install the package first: `pip install -e .`)."""

from foprokd_jax.cli.convert_teacher import run

if __name__ == "__main__":
    run()
