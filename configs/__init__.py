"""Experiment configs (ml_collections). One file per experiment; its docstring holds the exact command."""
