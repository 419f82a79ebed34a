"""Regenerates reproduce_isic.ipynb from its py:percent twin (no jupytext needed): `python notebooks/build_ipynb.py`."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def percent_to_cells(text):
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
        cells.append(
            {
                "cell_type": kind,
                "metadata": {},
                "source": body.splitlines(True),
                **({"execution_count": None, "outputs": []} if kind == "code" else {}),
            }
        )

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"
    return cells


def build(py_path):
    with open(py_path) as f:
        cells = percent_to_cells(f.read())
    return {
        "cells": cells,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "accelerator": "GPU",
            "kernelspec": {"display_name": "Python 3", "name": "python3"},
            "language_info": {"name": "python"},
        },
    }


if __name__ == "__main__":
    py = os.path.join(HERE, "reproduce_isic.py")
    out = os.path.join(HERE, "reproduce_isic.ipynb")
    with open(out, "w") as f:
        json.dump(build(py), f, indent=1)
        f.write("\n")
    print("wrote", out, file=sys.stderr)
