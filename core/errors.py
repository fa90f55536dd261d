"""The exception tree of flowlog.

Every error a user can cause is a :class:`FlowlogError` with a message that says
what is wrong and, where it helps, how to fix it. The command line prints that
message as one line and exits non-zero; anything else escaping is a bug.
"""


class FlowlogError(Exception):
    """Base of every error flowlog reports to a user."""


class ConfigError(FlowlogError):
    """A bad option, URI, plugin set-up or configuration value."""


class SourceError(FlowlogError):
    """A source could not be opened or read (missing file, not a capture, ...)."""


class SinkError(FlowlogError):
    """A sink could not accept records."""


class DecodeError(FlowlogError):
    """A frame or file could not be decoded."""


class OutputClosed(FlowlogError):
    """The reader of the output went away (``flowlog ... | head``): the run ends quietly."""
