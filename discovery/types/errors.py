"""One root exception for everything a user can act on.

Bad input is rejected once, where it enters (task build, circuit parse, job submit), with a
message that names the offending prompt, component or parameter. The CLI prints these messages
without a traceback; anything else is a bug and keeps its traceback.
"""


class CircuitsError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(CircuitsError, ValueError):
    """The caller asked for something invalid: unknown task, bad component, bad parameter."""


class TokenizationError(UsageError):
    """A prompt or answer does not tokenise the way the task needs (length, single token)."""


class StoreError(CircuitsError):
    """The database refused or failed an operation (wrapped from the driver's error)."""
