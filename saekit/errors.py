"""The one base class of every error saekit raises on purpose.

The CLI catches `SaekitError` once and prints its message (exit code 2); anything else is a bug
and keeps its traceback. Each layer subclasses it beside the code that raises it; the built-in
base (ValueError, RuntimeError) is kept so callers catching those still work.
"""


class SaekitError(Exception):
    """Bad input or a failed step, with a message that says what and where."""
