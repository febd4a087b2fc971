"""User-facing errors. Each message names the file, what was expected, what was found, the fix.

`UsageError` (exit code 2) is a wrong flag or path the user typed; `DataError` (exit code 1) is
something wrong inside the data or the output folder. Both are `ValueError`s.
"""


class PipelineError(ValueError):
    exit_code = 1


class UsageError(PipelineError):
    exit_code = 2


class DataError(PipelineError):
    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (`ray job stop`, Kubernetes, batch schedulers), raised in the driver so that it
    unwinds as Ctrl-C does: cleanup, one line, exit 143, resumable."""


def one_line(exc: BaseException) -> str:
    """A message on one line (embedded causes may hold newlines), whole."""
    return " ".join(str(exc).split())


def brief(exc: BaseException, limit: int = 160) -> str:
    """An underlying exception's message on one line, cut to `limit` characters."""
    text = one_line(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"
