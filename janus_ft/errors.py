"""User-facing errors: one clear message, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad recipe. The CLI prints `str(err)` and exits with code 2."""

    exit_code = 2


class BadRecord(UserError):
    """A dataset record that cannot be used, located by source, line (a JSONL line number, or
    "row N" of another source) and field."""

    def __init__(self, path, line: int | str | None = None, field: str | None = None, problem: str | None = None):
        if problem is None:
            # Rebuilt from a message alone: torch's DataLoader re-raises a worker's exception as
            # `type(message)`, the message ending in the original "BadRecord: file:line: ..." line.
            last = [x for x in str(path).splitlines() if x.strip()][-1:] or [""]
            self.path, self.line, self.field, self.problem = "", None, None, last[0].split("BadRecord: ", 1)[-1]
            super().__init__(self.problem)
            return
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {problem}")

    def __reduce__(self):
        # Rebuilt from its four parts when it crosses a process boundary (a DataLoader worker
        # re-raising it in the trainer), so it stays a BadRecord and the CLI still exits 2.
        return BadRecord, (self.path, self.line, self.field, self.problem)


class RecipeError(UserError):
    """A recipe key, value or combination that cannot work."""
