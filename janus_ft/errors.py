"""User-facing errors: one clear message, exit code 2, no traceback (STYLE.md rule 9)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad recipe. The CLI prints `str(err)` and exits with code 2."""

    exit_code = 2


class BadRecord(UserError):
    """A dataset record that cannot be used, located by file, line and field."""

    def __init__(self, path, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {problem}")


class RecipeError(UserError):
    """A recipe key, value or combination that cannot work."""
