"""The exceptions valleys raises on purpose.

Every argument check in valleys raises an :class:`ArgumentError`: an
:class:`ArgumentValueError` (a ``ValueError``) for a value out of range, an inconsistent
combination or unusable data, an :class:`ArgumentTypeError` (a ``TypeError``) for an argument of
the wrong kind. Both subclass the built-in exceptions, so ``except ValueError`` keeps working,
while ``except valleys.errors.ArgumentError`` catches exactly the mistakes the caller can fix
by changing an argument. The command line turns those, and only those, into one line and exit
status 2; any other exception is a bug and keeps its traceback.

:class:`NotConvergedError` (a ``RuntimeError``) says that a solver spent its budget before
reaching the requested accuracy; the partial result is on ``.result`` when there is one.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "NotConvergedError",
    "ValleysError",
]


class ValleysError(Exception):
    """Base class of the exceptions valleys raises on purpose."""


class ArgumentError(ValleysError):
    """An argument the caller can fix: the message names it and says what would be accepted."""


class ArgumentValueError(ArgumentError, ValueError):
    """An argument of the right kind with an unusable value (range, shape, dtype, contents)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong kind (a string where a number goes, a model that is not a
    ``torch.nn.Module``, ...)."""


class NotConvergedError(ValleysError, RuntimeError):
    """A solver stopped at its budget before the requested accuracy was certified."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result
