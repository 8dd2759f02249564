"""Errors a user can cause or meet. The CLI turns each into one line on stderr and an exit code.

Anything else that escapes is a bug in mnist-cnn and is shown as such.
"""
from __future__ import annotations

# C0, DEL and C1 control characters as \xNN: text from files, requests or models (a class name,
# a path) cannot then move the cursor, recolour or clear a terminal, or split a one-line error.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def escape_controls(text: str) -> str:
    """`text` with control characters written as \\xNN (ESC -> "\\x1b"), safe to print."""
    return text.translate(_CONTROL)


class MnistCnnError(Exception):
    """A failure to report as one line, without a traceback. Exit code 1 (runtime)."""

    exit_code = 1


class UsageError(MnistCnnError):
    """The user asked for something invalid (bad flag value, unknown name, clashing run). Exit 2."""

    exit_code = 2


class DataError(MnistCnnError):
    """A data set could not be obtained or failed verification."""


class CheckpointError(MnistCnnError):
    """A checkpoint or run directory is missing, truncated, or from an incompatible model/format."""
