"""The one error type for problems a user can cause and fix.

The CLI prints its message as a single sentence and exits non-zero; any other exception is a bug
and keeps its traceback.
"""


class TlearnError(Exception):
    """A problem with the user's input (path, data, option, model file) and what to do."""
