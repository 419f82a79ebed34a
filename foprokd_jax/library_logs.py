"""Keeps the training log readable: library INFO lines are dropped, their warnings and errors still show."""

import logging as pylogging


class _LibraryInfoFilter(pylogging.Filter):
    """Drops INFO/DEBUG records emitted from inside chatty libraries (Orbax logs ~20 lines per save)."""

    def __init__(self, fragments):
        super().__init__()
        self._fragments = tuple(fragments)

    def filter(self, record):
        return record.levelno >= pylogging.WARNING or not any(f in record.pathname for f in self._fragments)


def quiet_library_logs(fragments=("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/grain/")) -> None:
    """Keeps the training log readable: library warnings and errors still show, their INFO lines don't."""
    flt = _LibraryInfoFilter(fragments)
    for logger in (pylogging.getLogger(), pylogging.getLogger("absl")):
        logger.addFilter(flt)
        for handler in logger.handlers:
            handler.addFilter(flt)
