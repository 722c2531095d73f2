"""Logging setup for a run: rank 0 talks, other ranks only warn; a copy of the messages goes to a file."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

__all__ = ["run_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_logging(log_file: str | os.PathLike | None, rank: int) -> Iterator[None]:
    """Configure the ``genattn`` logger for the duration of a run.

    Rank 0 logs INFO and above to ``log_file`` (if given) and, if the application configured no logging at all, to
    stderr; other ranks log warnings only (to stderr, through whatever the application set up). Everything is
    put back afterwards.
    """
    root_logger = logging.getLogger("genattn")
    old_level = root_logger.level
    added: list[logging.Handler] = []
    if rank == 0:
        root_logger.setLevel(logging.INFO)
        if log_file is not None:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
            file_handler.setFormatter(logging.Formatter(_FORMAT))
            added.append(file_handler)
        if not root_logger.hasHandlers():
            stream = logging.StreamHandler()
            stream.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            added.append(stream)
    else:
        root_logger.setLevel(logging.WARNING)
    for handler in added:
        root_logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            root_logger.removeHandler(handler)
            handler.close()
        root_logger.setLevel(old_level)
