"""Parsers of flag values shared by several command-line tools."""


def parse_size(text: str, flag: str = "image_size") -> tuple:
    """'600x450' -> (600, 450); a ValueError naming the flag otherwise."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--{flag}={text!r} is not WIDTHxHEIGHT (e.g. 600x450)") from None
    return width, height
