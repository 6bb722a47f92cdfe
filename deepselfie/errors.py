"""The one exception type for problems a user can cause and fix.

Its message is a single line that names the file (or option), the field and what is wrong; the
CLI prints it and exits with code 2. Everything else is a bug and keeps its traceback.

The Caffe runtime (models/caffe) depends on nothing in the application, so it raises its own
``CaffeError`` with the same one-line form; ``UserError`` is a kind of CaffeError. Application
code raises UserError; code that calls the runtime and must handle a bad input catches
``CaffeError`` (which catches both), as the CLI does.
"""
from models.caffe.errors import CaffeError


class UserError(CaffeError):
    """Bad input: a config key, a prototxt field, a missing or corrupt file, a bad option."""

    exit_code = 2


def shortened(text: str, limit: int = 40) -> str:
    """A value from a stranger's file cut to ``limit`` characters (and "...") for a one-line
    message."""
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["CaffeError", "UserError", "shortened"]
