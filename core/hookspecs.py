"""The hooks flowlog offers to plugins (pluggy project and entry-point group ``flowlog``).

A plugin is a module or object with functions marked ``@hookimpl``; a third-party
package makes it known through an entry point in the ``flowlog`` group::

    [project.entry-points.flowlog]
    mysink = "flowlog_mysink"

Sources and sinks are registered, not returned: flowlog calls the hook with a
``register`` callable, and the plugin calls it once per class it provides (the
built-in ``pcap`` source and ``stdout`` sink are written exactly this way).
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "flowlog"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_sources(register: Callable[[type], None]) -> None:
    """Register source classes.

    Call ``register(SourceClass)`` for each :class:`flowlog.core.api.Source`
    subclass the plugin provides. The class's ``scheme`` attribute names the URI
    scheme it reads (``pcap`` for ``pcap:trace.pcap``); two plugins claiming the
    same scheme is an error that stops flowlog before it reads anything.
    """


@hookspec
def register_sinks(register: Callable[[type], None]) -> None:
    """Register sink classes.

    Call ``register(SinkClass)`` for each :class:`flowlog.core.api.Sink`
    subclass the plugin provides. The class's ``scheme`` attribute names the URI
    scheme it writes (``stdout`` for ``stdout:``); two plugins claiming the same
    scheme is an error.
    """
