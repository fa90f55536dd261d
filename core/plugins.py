"""The plugin manager: built-ins from DEFAULT_PLUGINS, third parties from entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import NoReturn

import pluggy

from . import hookspecs
from .errors import ConfigError

#: Built-in plugins, registered exactly like third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "flowlog.plugins.live",
    "flowlog.plugins.pcap",
    "flowlog.plugins.ring",
    "flowlog.plugins.stdout",
    "flowlog.plugins.file",
    "flowlog.plugins.cls",
    "flowlog.plugins.cos",
    "flowlog.plugins.es",
    "flowlog.plugins.splunk",
)

#: Environment variable restricting third-party plugins: unset loads all,
#: empty loads none, ``a,b`` loads only the entry points (or distributions) named.
LOAD_PLUGINS_ENV = "FLOWLOG_LOAD_PLUGINS"

#: Environment variable naming plugin modules to load by import path (``pkg.module,other``):
#: plugins that are not installed as a distribution (development, tests of a plugin, a
#: subprocess that must see one). They load whatever FLOWLOG_LOAD_PLUGINS says.
PLUGINS_ENV = "FLOWLOG_PLUGINS"


def _env_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


@dataclass(frozen=True)
class Registration:
    kind: str          # "source" or "sink"
    scheme: str
    cls: type
    plugin: str        # plugin name in the manager
    origin: str        # "built-in" or "DIST VERSION"

    @property
    def description(self) -> str:
        return getattr(self.cls, "description", "") or (self.cls.__doc__ or "").strip().split("\n")[0]


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins and, unless disabled, third-party plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    pm.check_pending()  # a built-in failing here is a flowlog bug: let it show as one
    if load_entrypoints:
        _load_entrypoints(pm)
        _load_modules(pm)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as e:
            _invalid_plugin(pm.get_name(e.plugin), e)
    return pm


def _invalid_plugin(name: str, e: pluggy.PluginValidationError) -> NoReturn:
    reason = "; ".join(str(e).splitlines())
    raise ConfigError(f"plugin {name!r} from {plugin_origin(name)} is not a valid flowlog plugin ({reason}); "
                      f"fix or uninstall it, or leave it out with {LOAD_PLUGINS_ENV}") from None


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    allowed = os.environ.get(LOAD_PLUGINS_ENV)
    if allowed is not None:
        allowed_names = {a.strip() for a in allowed.split(",") if a.strip()}
        if not allowed_names:
            return
    else:
        allowed_names = None
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        dist = ep.dist.name if ep.dist else "?"
        if allowed_names is not None and ep.name not in allowed_names and dist not in allowed_names:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as e:  # a broken third-party package must not look like a flowlog bug
            raise ConfigError(
                f"plugin {ep.name!r} from {dist} failed to load ({type(e).__name__}: {e}); "
                f"fix or uninstall it, or leave it out with {LOAD_PLUGINS_ENV}"
            ) from None
        try:
            pm.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as e:
            _invalid_plugin(ep.name, e)


def _load_modules(pm: pluggy.PluginManager) -> None:
    """The modules named by FLOWLOG_PLUGINS, registered under their import path."""
    for name in _env_modules():
        if pm.get_plugin(name) is not None or pm.is_blocked(name):
            continue
        try:
            module = importlib.import_module(name)
        except Exception as e:
            raise ConfigError(f"plugin module {name!r} named in {PLUGINS_ENV} failed to load "
                              f"({type(e).__name__}: {e}); fix it or leave it out of {PLUGINS_ENV}") from None
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as e:
            _invalid_plugin(name, e)
        except ValueError:          # the same module object is already registered (an entry point)
            continue


def plugin_origin(name: str) -> str:
    """Where a registered plugin came from: ``built-in``, the distribution and version, or FLOWLOG_PLUGINS."""
    if name in DEFAULT_PLUGINS:
        return "built-in"
    if name in _env_modules():
        return PLUGINS_ENV
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT, name=name):
        if ep.dist:
            return f"{ep.dist.name} {ep.dist.version}"
    return "registered at run time"


class PluginRegistry:
    """The sources and sinks the installed plugins provide, by URI scheme."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.sources: dict[str, Registration] = {}
        self.sinks: dict[str, Registration] = {}
        for hook_name, kind, table in (("register_sources", "source", self.sources),
                                       ("register_sinks", "sink", self.sinks)):
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                origin = plugin_origin(impl.plugin_name)

                def register(cls, _impl=impl, _origin=origin, _kind=kind, _table=table):
                    scheme = (getattr(cls, "scheme", "") or "").lower()
                    if not scheme:
                        raise ConfigError(f"plugin {_impl.plugin_name!r} registered a {_kind} with no scheme")
                    if scheme in _table:
                        other = _table[scheme]
                        raise ConfigError(
                            f"plugins {other.plugin!r} and {_impl.plugin_name!r} both claim the {_kind} "
                            f"scheme '{scheme}:'; uninstall one, or restrict plugins with {LOAD_PLUGINS_ENV}")
                    _table[scheme] = Registration(_kind, scheme, cls, _impl.plugin_name, _origin)

                impl.function(register=register)

    def source(self, scheme: str) -> Registration:
        return self._get(self.sources, "source", scheme)

    def sink(self, scheme: str) -> Registration:
        return self._get(self.sinks, "sink", scheme)

    @staticmethod
    def _get(table, kind, scheme) -> Registration:
        try:
            return table[scheme]
        except KeyError:
            known = ", ".join(f"{s}:" for s in sorted(table)) or "none"
            raise ConfigError(f"no {kind} plugin handles '{scheme}:' (installed {kind}s: {known})") from None

    def all(self) -> list[Registration]:
        return sorted([*self.sources.values(), *self.sinks.values()], key=lambda r: (r.kind, r.scheme))


def get_registry(load_entrypoints: bool = True) -> PluginRegistry:
    return PluginRegistry(get_plugin_manager(load_entrypoints))
