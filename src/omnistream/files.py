"""The one check every user-given input file goes through before a decoder opens it."""

from __future__ import annotations

import os


def check_input_file(path: str | os.PathLike, name: str, error: type[Exception]) -> None:
    """Raise `error` naming the input when `path` is missing, not a regular file, or empty."""
    if not os.path.exists(path):
        raise error(f"{name} does not exist")
    if not os.path.isfile(path):
        raise error(f"{name} is not a file")
    if os.path.getsize(path) == 0:
        raise error(f"{name} is empty (0 bytes)")
