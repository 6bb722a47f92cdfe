"""The one exception type for problems a user can cause and fix.

Its message is a single line that names the file (or option), the field and what is wrong; the
CLI prints it and exits with code 2. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a config key, a prototxt field, a missing or corrupt file, a bad option."""

    exit_code = 2

    def __init__(self, message, *, path=None, field=None):
        self.path = str(path) if path is not None else None
        self.field = field
        parts = [p for p in (self.path, field) if p]
        self.detail = message
        super().__init__(": ".join(parts + [message]))
