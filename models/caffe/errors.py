"""The runtime's one error type for problems a user can cause and fix: a bad prototxt field, a
missing or corrupt .caffemodel / .binaryproto / LMDB, a bad argument to the pycaffe API.

Its message is one line naming the file, the field and what is wrong; a command line tool prints
it and exits with ``exit_code`` (2). Anything else the runtime raises is a bug and keeps its
traceback. (The application's ``deepselfie.errors.UserError`` is a kind of CaffeError, so
``except CaffeError`` catches both.)
"""


class CaffeError(Exception):
    """Bad input to the runtime, as one line: ``path: field: message``."""

    exit_code = 2

    def __init__(self, message, *, path=None, field=None):
        self.path = str(path) if path is not None else None
        self.field = field
        self.detail = message
        super().__init__(": ".join([p for p in (self.path, field) if p] + [message]))
