"""The package's exception types: one per kind of bad input.

Each is a subclass of the built-in exception a caller would already catch (``ValueError`` for
bad values and bad file contents, ``FileExistsError`` for a refused overwrite), so existing
``except ValueError`` code keeps working, and of :class:`VitpruneError`, so the command line can
report every one of them as a one-line error instead of a traceback.

Every message names the offending value or file, says what was wrong and what is accepted.
"""
from __future__ import annotations

__all__ = ["VitpruneError", "InvalidValueError", "InvalidFileError", "InputTooLargeError",
           "ParameterError", "OverwriteRefusedError", "UnsupportedModelError"]


class VitpruneError(Exception):
    """Base of every error this package raises on purpose for bad input."""


class InvalidValueError(VitpruneError, ValueError):
    """An argument or option has a value (or type) outside what is accepted."""


class InvalidFileError(VitpruneError, ValueError):
    """A file exists but cannot be used: unreadable, malformed, truncated or inconsistent."""


class InputTooLargeError(InvalidFileError):
    """A file, or what it asks to allocate, exceeds the caps on input size (checked before reading)."""


class ParameterError(InvalidValueError):
    """A notebook parameter (``reproduce -p NAME=VALUE``) is unknown or has the wrong type."""


class OverwriteRefusedError(VitpruneError, FileExistsError):
    """Writing would replace a file that must not be replaced without an explicit request."""


class UnsupportedModelError(InvalidValueError, TypeError):
    """A model is not a ViT this package supports, or lacks a part a method needs (a plain
    ``Mlp``, a class token, ...). Also a ``TypeError``: the model is the wrong kind of object."""
