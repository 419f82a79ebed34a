"""Command-line tools of foprokd_jax (absl flags, `main(argv)`, `run()`); launch/<name>.py are thin wrappers."""
