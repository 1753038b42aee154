"""Errors a user can act on. The CLI prints them as one line and exits 1; anything else is a bug."""


class OnnxPruneError(Exception):
    """A problem with the user's input (file, model, data or options), reported in one line."""
