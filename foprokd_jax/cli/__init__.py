"""The command-line tools: `foprokd-<name>` console scripts, also run as `python launch/<name>.py`.

They are the top layer, like launch/: they may read the experiment configs (`configs/`); the library below them
never imports `configs/`.
"""
