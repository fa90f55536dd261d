"""flowlog's core: capture windows, records and formats, with no command-line code.

The core never imports click; the command line (``flowlog.cli``) is a thin layer
over it, and plugins (``flowlog.plugins`` and third parties) provide sources and
sinks through the hooks in :mod:`flowlog.core.hookspecs`.
"""

__version__ = "0.1.0"
