"""The one exception type for a user's mistake.

Anything raised as `UserError` is printed by the CLI as a single line and exits with code 2;
everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user (unknown name, missing file, malformed row, ...)."""


def unknown_name(kind: str, name: str, valid) -> UserError:
    """`unknown task 'foo'; valid: cola, mnli, ...` — the message every registry uses."""
    return UserError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


class Preempted(Exception):
    """SIGTERM arrived during training: the state was saved (harness/resume.py); re-running continues the run."""
