"""Error types.

Every mistake a user can make (a bad recipe, an unknown name, missing or malformed
data, a corrupted result file, a bad command-line value) raises a subclass of
:class:`XmrbenchError`. The command line turns these into one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class XmrbenchError(Exception):
    """Base class of all user-facing errors.

    ``where`` names the file (or object) and ``key`` the dotted key inside it, so
    the one-line message reads ``<where>: <key>: <message>``.
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, key: str | None = None):
        self.message = message
        self.where = where
        self.key = key
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [p for p in (self.where, self.key) if p]
        text = " ".join(str(self.message).split())  # never more than one line
        return ": ".join([*parts, text]) if parts else text


class RecipeError(XmrbenchError):
    """A recipe file is missing, malformed, or names something that does not exist."""


class ConfigError(XmrbenchError):
    """A configuration value (from a recipe, a profile or ``--set``) is invalid."""


class RegistryError(XmrbenchError):
    """A name was looked up in a registry that does not hold it."""


class DataError(XmrbenchError):
    """A dataset directory or array is missing, has the wrong shape, or holds NaN/inf."""


class StoreError(XmrbenchError):
    """A results file is corrupted, partial, or written by an incompatible version."""


class TrainingError(XmrbenchError):
    """Training cannot continue (for example, the loss became NaN)."""


class UsageError(XmrbenchError):
    """A command-line argument is invalid."""


class CheckFailed(XmrbenchError):
    """A check (regression gate, claim) failed; exit code 1."""

    exit_code = 1
