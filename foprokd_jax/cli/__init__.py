"""The command-line tools: `foprokd-<name>` console scripts, also run as `python launch/<name>.py`."""
