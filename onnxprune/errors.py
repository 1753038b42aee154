"""Errors a user can act on. The CLI prints them as one line and exits with their `exit_code` (1;
2 for a usage error); anything else is a bug."""


class OnnxPruneError(Exception):
    """A problem with the user's input (file, model, data or options), reported in one line."""

    exit_code = 1


class UsageError(OnnxPruneError):
    """A bad option or combination of options, found before any file is read (exit code 2, as
    click's own usage errors)."""

    exit_code = 2
