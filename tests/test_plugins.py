"""The plugin system: built-ins, hooks, `flowlog plugins`, scheme clashes, entry points, and a real install.

In-process tests add plugins two ways: objects registered on a manager under an ``undo-``
name and unregistered after, and small distributions (a module plus a ``.dist-info`` with
an ``entry_points.txt``) written to a temporary directory put on ``sys.path``, which
importlib.metadata finds exactly as it finds installed packages. The last tests install
``tests/plugin_example`` with pip into a fresh venv and drive flowlog from there.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest
from click.testing import CliRunner

from flowlog.cli.main import main
from flowlog.core import hookspecs
from flowlog.core.api import Sink, Source
from flowlog.core.errors import ConfigError
from flowlog.core.hookspecs import hookimpl
from flowlog.core.plugins import (DEFAULT_PLUGINS, LOAD_PLUGINS_ENV, PluginRegistry, get_plugin_manager,
                                  get_registry)
from flowlog.core.records import V2_FIELDS
from flowlog.plugins.pcap import PcapSource
from flowlog.plugins.stdout import StdoutSink

TESTS = Path(__file__).resolve().parent
EXAMPLE = TESTS / "plugin_example"
ICMP = TESTS / "data" / "captures" / "icmp.pcap"

#: The hooks declared in hookspecs.py, by name.
HOOKS = sorted(name for name, f in vars(hookspecs).items() if hasattr(f, f"{hookspecs.PROJECT}_spec"))


class FakeSource(Source):
    """A source for tests."""

    scheme = "undotest"

    def batches(self):
        return iter(())


class FakeSink(Sink):
    """A sink for tests."""

    scheme = "undotest"

    def write(self, records) -> None:
        pass


@pytest.fixture(autouse=True)
def _all_plugins(monkeypatch):
    """Every test starts with FLOWLOG_LOAD_PLUGINS unset, i.e. all third-party plugins allowed."""
    monkeypatch.delenv(LOAD_PLUGINS_ENV, raising=False)


@pytest.fixture
def pm() -> pluggy.PluginManager:
    return get_plugin_manager(load_entrypoints=False)


@contextlib.contextmanager
def registered(pm: pluggy.PluginManager, plugin, name: str):
    """Register ``plugin`` for the duration of a ``with`` block (datasette's ``undo-`` habit)."""
    assert name.startswith("undo-")
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(name=name)
    assert pm.get_plugin(name) is None


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """``install(dist, entry_point, module, source)``: a distribution with one ``flowlog`` entry point."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules = []

    def install(dist: str, entry_point: str, module: str, source: str) -> None:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[flowlog]\n{entry_point} = {module}\n")
        modules.append(module)
        importlib.invalidate_caches()

    yield install
    for m in modules:
        sys.modules.pop(m, None)


def sink_plugin(scheme: str) -> str:
    """The source of a plugin module registering one sink."""
    return f"""
        from flowlog.core.api import Sink
        from flowlog.core.hookspecs import hookimpl

        class S(Sink):
            "A {scheme} sink for tests."
            scheme = "{scheme}"
            def write(self, records):
                pass

        @hookimpl
        def register_sinks(register):
            register(S)
        """


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a tabulate "simple" table, cut at the rule's column spans."""
    header, rule, *rows = text.rstrip("\n").splitlines()
    spans = [m.span() for m in re.finditer(r"-+", rule)]
    spans[-1] = (spans[-1][0], None)

    def cut(line):
        return [line[a:b].strip() for a, b in spans]

    return cut(header), [cut(r) for r in rows]


# --- built-ins ------------------------------------------------------------------------------------

def test_builtins_come_from_default_plugins(pm):
    assert {"flowlog.plugins.pcap", "flowlog.plugins.ring", "flowlog.plugins.stdout"} <= set(DEFAULT_PLUGINS)
    assert {pm.get_name(p) for p in pm.get_plugins()} == set(DEFAULT_PLUGINS)
    for name in DEFAULT_PLUGINS:
        assert pm.get_plugin(name) is importlib.import_module(name)
    registry = PluginRegistry(pm)
    regs = [(r.kind, r.scheme, r.plugin, r.origin) for r in registry.all()]
    assert all(origin == "built-in" and plugin in DEFAULT_PLUGINS for _, _, plugin, origin in regs)
    for expected in (("sink", "stdout", "flowlog.plugins.stdout", "built-in"),
                     ("source", "pcap", "flowlog.plugins.pcap", "built-in"),
                     ("source", "ring", "flowlog.plugins.ring", "built-in")):
        assert expected in regs
    assert registry.source("pcap").cls is PcapSource
    assert registry.sink("stdout").cls is StdoutSink


def test_builtins_use_the_public_hookimpl():
    """Built-ins are ordinary plugins: the same marker a third party uses, nothing private."""
    marker = f"{hookspecs.PROJECT}_impl"
    for name in DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        impls = [n for n in HOOKS if hasattr(getattr(module, n, None), marker)]
        assert impls, f"{name} implements no hook"


def test_unknown_scheme_names_the_installed_ones(pm):
    registry = PluginRegistry(pm)
    with pytest.raises(ConfigError, match=r"no sink plugin handles 'nope:' \(installed sinks: [a-z+:, ]*\bstdout:[a-z+:, ]*\)"):
        registry.sink("nope")
    with pytest.raises(ConfigError, match=r"no source plugin handles 'nope:' \(installed sources: [a-z:, ]*\bpcap:[a-z:, ]*\)"):
        registry.source("nope")


# --- hooks ----------------------------------------------------------------------------------------

def test_hookspecs_are_all_documented(pm):
    assert HOOKS, "no hookspecs found"
    assert sorted(n for n in vars(pm.hook) if not n.startswith("_")) == HOOKS
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__
        assert doc and doc.strip(), f"hookspec {name} has no docstring"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised(hook):
    assert f"test_hook_{hook}" in globals(), f"add a test_hook_{hook} to {Path(__file__).name}"


def test_hook_register_sources(pm):
    class Plugin:
        @hookimpl
        def register_sources(self, register):
            register(FakeSource)

    with registered(pm, Plugin(), "undo-sources"):
        reg = PluginRegistry(pm).source("undotest")
        assert (reg.kind, reg.cls, reg.plugin, reg.origin) == ("source", FakeSource, "undo-sources",
                                                               "registered at run time")
        assert reg.description == "A source for tests."
        # pluggy's own call reaches every implementation, the built-in's included
        got = []
        pm.hook.register_sources(register=got.append)
        assert {FakeSource, PcapSource} <= set(got)
        assert all(c is FakeSource or c.__module__ in DEFAULT_PLUGINS for c in got)
    with pytest.raises(ConfigError):
        PluginRegistry(pm).source("undotest")


def test_hook_register_sinks(pm):
    class Plugin:
        @hookimpl
        def register_sinks(self, register):
            register(FakeSink)

    with registered(pm, Plugin(), "undo-sinks"):
        reg = PluginRegistry(pm).sink("undotest")
        assert (reg.kind, reg.cls, reg.plugin, reg.origin) == ("sink", FakeSink, "undo-sinks",
                                                               "registered at run time")
        got = []
        pm.hook.register_sinks(register=got.append)
        assert {FakeSink, StdoutSink} <= set(got)
        assert all(c is FakeSink or c.__module__ in DEFAULT_PLUGINS for c in got)
    with pytest.raises(ConfigError):
        PluginRegistry(pm).sink("undotest")


@pytest.mark.parametrize("hook, base, scheme, builtin", [
    ("register_sources", FakeSource, "pcap", "flowlog.plugins.pcap"),
    ("register_sources", FakeSource, "PCAP", "flowlog.plugins.pcap"),
    ("register_sinks", FakeSink, "stdout", "flowlog.plugins.stdout"),
])
def test_two_plugins_claiming_one_scheme_is_an_error(pm, hook, base, scheme, builtin):
    clash = type("Clash", (base,), {"scheme": scheme})
    plugin = SimpleNamespace(**{hook: hookimpl(lambda register: register(clash))})
    with registered(pm, plugin, "undo-clash"):
        with pytest.raises(ConfigError) as e:
            PluginRegistry(pm)
        msg = str(e.value)
        assert repr(builtin) in msg and "'undo-clash'" in msg
        assert f"scheme '{scheme.lower()}:'" in msg and LOAD_PLUGINS_ENV in msg
        assert "\n" not in msg
    PluginRegistry(pm)  # fine again once the clash is gone


def test_a_source_without_a_scheme_is_an_error(pm):
    nameless = type("Nameless", (FakeSource,), {"scheme": ""})
    plugin = SimpleNamespace(register_sources=hookimpl(lambda register: register(nameless)))
    with registered(pm, plugin, "undo-nameless"):
        with pytest.raises(ConfigError, match="'undo-nameless' registered a source with no scheme"):
            PluginRegistry(pm)


def test_misspelled_hook_fails_check_pending(pm):
    class Typo:
        @hookimpl
        def register_source(self, register):  # register_sources
            pass

    with registered(pm, Typo(), "undo-typo"):
        with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'register_source'"):
            pm.check_pending()
    pm.check_pending()


def test_wrong_hook_arguments_fail_at_registration(pm):
    class WrongArgs:
        @hookimpl
        def register_sinks(self, reg):  # the argument is called register
            pass

    with pytest.raises(pluggy.PluginValidationError, match=r"Argument\(s\) \{'reg'\}"):
        pm.register(WrongArgs(), name="undo-wrong-args")
    if pm.get_plugin("undo-wrong-args") is not None:  # pluggy leaves it half-registered
        pm.unregister(name="undo-wrong-args")


# --- the `flowlog plugins` command ----------------------------------------------------------------

def test_cli_plugins_table(fake_dist):
    fake_dist("flowlog-fake-table", "fake-table", "flowlog_fake_table", sink_plugin("faketable"))
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    header, rows = parse_table(result.output)
    assert header == ["name", "kind", "scheme", "from", "description"]
    by_scheme = {r[2]: r for r in rows}
    assert by_scheme["pcap:"][:4] == ["flowlog.plugins.pcap", "source", "pcap:", "built-in"]
    assert by_scheme["stdout:"][:4] == ["flowlog.plugins.stdout", "sink", "stdout:", "built-in"]
    assert by_scheme["faketable:"] == ["fake-table", "sink", "faketable:", "flowlog-fake-table 1.0",
                                       "A faketable sink for tests."]
    assert by_scheme["pcap:"][4] and by_scheme["stdout:"][4], "built-ins have a description"


def test_cli_plugins_json(fake_dist):
    fake_dist("flowlog-fake-json", "fake-json", "flowlog_fake_json", sink_plugin("fakejson"))
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert all(set(r) == {"name", "kind", "scheme", "origin", "description"} for r in rows)
    by_scheme = {r["scheme"]: r for r in rows}
    assert by_scheme["pcap:"]["origin"] == "built-in" and by_scheme["pcap:"]["kind"] == "source"
    assert by_scheme["stdout:"]["name"] == "flowlog.plugins.stdout"
    assert by_scheme["fakejson:"] == {"name": "fake-json", "kind": "sink", "scheme": "fakejson:",
                                      "origin": "flowlog-fake-json 1.0",
                                      "description": "A fakejson sink for tests."}


# --- third parties through entry points -----------------------------------------------------------

@pytest.fixture
def two_dists(fake_dist):
    fake_dist("flowlog-fake-a", "fake-a", "flowlog_fake_a", sink_plugin("fakea"))
    fake_dist("flowlog-fake-b", "fake-b", "flowlog_fake_b", sink_plugin("fakeb"))


def _fake_schemes(registry: PluginRegistry) -> set[str]:
    return {s for s in registry.sinks if s in ("fakea", "fakeb")}


def test_entry_points_are_loaded_by_default(two_dists):
    registry = get_registry()
    assert _fake_schemes(registry) == {"fakea", "fakeb"}
    reg = registry.sink("fakea")
    assert (reg.plugin, reg.origin) == ("fake-a", "flowlog-fake-a 1.0")


def test_load_entrypoints_false_loads_none(two_dists):
    assert _fake_schemes(get_registry(load_entrypoints=False)) == set()
    assert "flowlog_fake_a" not in sys.modules


def test_load_plugins_env_empty_disables_third_parties(two_dists, monkeypatch):
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    registry = get_registry()
    assert {r.plugin for r in registry.all()} == set(DEFAULT_PLUGINS)
    assert "flowlog_fake_a" not in sys.modules and "flowlog_fake_b" not in sys.modules  # not even imported


@pytest.mark.parametrize("allowed, expected", [
    ("fake-a", {"fakea"}),                   # by entry-point name
    ("flowlog-fake-b", {"fakeb"}),           # by distribution name
    (" fake-a , fake-b ", {"fakea", "fakeb"}),
    ("something-else", set()),
])
def test_load_plugins_env_restricts_third_parties(two_dists, monkeypatch, allowed, expected):
    monkeypatch.setenv(LOAD_PLUGINS_ENV, allowed)
    assert _fake_schemes(get_registry()) == expected
    # the built-ins do not depend on the variable
    assert {"pcap", "stdout"} <= {r.scheme for r in get_registry().all()}


def test_plugin_that_fails_to_import_is_a_one_line_config_error(fake_dist, monkeypatch):
    fake_dist("flowlog-fake-broken", "fake-broken", "flowlog_fake_broken",
              "import flowlog_no_such_dependency\n")
    with pytest.raises(ConfigError) as e:
        get_registry()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("plugin 'fake-broken' from flowlog-fake-broken failed to load (ModuleNotFoundError")
    assert LOAD_PLUGINS_ENV in msg

    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"flowlog: error: {msg}"]

    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")  # the way out the message names
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("source, reason", [
    ("@hookimpl\ndef register_sink(register):\n    pass\n", "unknown hook 'register_sink'"),
    ("@hookimpl\ndef register_sinks(reg):\n    pass\n", "Argument(s) {'reg'} are declared in the hookimpl"),
])
def test_invalid_entry_point_plugin_is_a_one_line_config_error(fake_dist, monkeypatch, source, reason):
    fake_dist("flowlog-fake-invalid", "fake-invalid", "flowlog_fake_invalid",
              "from flowlog.core.hookspecs import hookimpl\n" + source)
    with pytest.raises(ConfigError) as e:
        get_plugin_manager()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("plugin 'fake-invalid' from flowlog-fake-invalid 1.0 is not a valid flowlog plugin")
    assert reason in msg and LOAD_PLUGINS_ENV in msg
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    get_plugin_manager()


# --- the real thing: tests/plugin_example installed by pip into a venv -----------------------------

EXAMPLE_ORIGIN = "flowlog-example-plugin 0.1.0"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that could point pip or Python elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE",
                                                      "VIRTUAL_ENV", LOAD_PLUGINS_ENV)}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    # Without a pip of its own: ensurepip would also bring its bundled setuptools (too old to build
    # a wheel) in front of the one this environment has. The venv runs this environment's pip,
    # which installs into the venv.
    made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                           str(env_dir)], capture_output=True, text=True, env=_clean_env(), timeout=300)
    python = env_dir / "bin" / "python"
    if made.returncode != 0 or not python.exists():
        pytest.skip(f"cannot create a venv with {sys.executable} -m venv: "
                    f"{(made.stderr or made.stdout).strip()[-500:]}")
    if sys.prefix != sys.base_prefix:
        # The tests run in a venv themselves (as in CI): --system-site-packages reaches only the base
        # interpreter's packages, so let the new venv see this one's too (flowlog, its dependencies, pip).
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, env=_clean_env(), check=True).stdout.strip()
        lines = [f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()]
        (Path(purelib) / "flowlog-test-parent.pth").write_text("".join(lines))
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in tests/plugin_example.
    src = shutil.copytree(EXAMPLE, root / "src",
                          ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q", str(src)],
                         capture_output=True, text=True, env=_clean_env(), cwd=root, timeout=300)
    assert pip.returncode == 0, (
        f"pip could not install tests/plugin_example (it needs a setuptools that builds wheels "
        f"offline: setuptools>=70.1, or the 'wheel' package):\n{pip.stdout}\n{pip.stderr}")
    where = subprocess.run([str(python), "-c", "import sys, flowlog_example_plugin as m; "
                            "print(sys.prefix); print(m.__file__)"],
                           capture_output=True, text=True, env=_clean_env(), cwd=root, timeout=60)
    assert where.returncode == 0, where.stderr
    prefix, module_file = where.stdout.splitlines()
    assert Path(prefix).resolve() == env_dir.resolve()
    assert Path(module_file).resolve().is_relative_to(env_dir.resolve())
    # ... and the environment running these tests did not get it
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("flowlog-example-plugin")

    def flowlog(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-m", "flowlog.cli", *args], capture_output=True, text=True,
                              env=_clean_env(**env), cwd=root, timeout=300)

    return SimpleNamespace(root=root, python=python, flowlog=flowlog)


def test_installed_plugin_is_listed(venv):
    p = venv.flowlog("plugins", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["scheme"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert rows["tsv:"]["kind"] == "sink" and rows["synth:"]["kind"] == "source"
    for scheme in ("tsv:", "synth:"):
        assert (rows[scheme]["name"], rows[scheme]["origin"]) == ("example", EXAMPLE_ORIGIN)
        assert rows[scheme]["description"]
    assert rows["pcap:"]["origin"] == rows["stdout:"]["origin"] == "built-in"

    p = venv.flowlog("plugins")
    assert p.returncode == 0, p.stderr
    header, table = parse_table(p.stdout)
    assert header[:4] == ["name", "kind", "scheme", "from"]
    assert ["example", "sink", "tsv:", EXAMPLE_ORIGIN] in [r[:4] for r in table]
    assert ["example", "source", "synth:", EXAMPLE_ORIGIN] in [r[:4] for r in table]


def test_installed_tsv_sink(venv):
    out = venv.root / "icmp.tsv"
    p = venv.flowlog("capture", "-r", str(ICMP), "--to", f"tsv:{out}")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""   # --to replaces the default stdout: sink
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    assert all(len(line.split("\t")) == len(V2_FIELDS) == 14 for line in lines)
    # the same records as the built-in text format
    text = venv.flowlog("capture", "-r", str(ICMP))
    assert text.returncode == 0, text.stderr
    assert [line.split("\t") for line in lines] == [line.split(" ") for line in text.stdout.splitlines()]


def test_installed_synth_source(venv):
    p = venv.flowlog("capture", "--from", "synth:")
    assert p.returncode == 0, p.stderr
    records = [line.split() for line in p.stdout.splitlines()]
    fields = V2_FIELDS.index
    keys = sorted((r[fields("interface-id")], r[fields("srcaddr")], r[fields("dstaddr")], r[fields("srcport")],
                   r[fields("dstport")], r[fields("protocol")], r[fields("packets")], r[fields("bytes")],
                   r[fields("log-status")]) for r in records)
    assert keys == [("synth0", "10.0.0.1", "10.0.0.2", "40000", "53", "17", "3", "144", "OK"),
                    ("synth0", "10.0.0.2", "10.0.0.1", "53", "40000", "17", "3", "264", "OK")]


def test_installed_synth_to_tsv(venv):
    out = venv.root / "synth.tsv"
    p = venv.flowlog("capture", "--from", "synth:", "--to", f"tsv:{out}", "--to", "stdout:")
    assert p.returncode == 0, p.stderr
    assert [line.split("\t") for line in out.read_text().splitlines()] == \
        [line.split(" ") for line in p.stdout.splitlines()]


@pytest.mark.parametrize("allowed, loaded", [
    (None, True), ("", False), ("example", True), ("flowlog-example-plugin", True), ("other", False),
])
def test_installed_plugin_and_load_plugins_env(venv, allowed, loaded):
    env = {} if allowed is None else {LOAD_PLUGINS_ENV: allowed}
    p = venv.flowlog("plugins", "--json", **env)
    assert p.returncode == 0, p.stderr
    schemes = {json.loads(line)["scheme"] for line in p.stdout.splitlines()}
    assert ({"tsv:", "synth:"} <= schemes) is loaded
    assert {"pcap:", "stdout:"} <= schemes
    if not loaded:
        p = venv.flowlog("capture", "-r", str(ICMP), "--to", "tsv:/nonexistent/x.tsv", **env)
        assert p.returncode == 2
        assert len(p.stderr.splitlines()) == 1
        assert re.fullmatch(r"flowlog: error: no sink plugin handles 'tsv:' \(installed sinks: [a-z+:, ]*\bstdout:"
                            r"[a-z+:, ]*\)", p.stderr.strip()) and "tsv:" not in p.stderr.split("installed")[1]


def test_installed_delivery_sink_gets_the_spool_and_retries(venv):
    """The example's post+http: sink has no retry or spool code: installed through its entry point, a
    receiver that answers 503 twice still ends up with every record, and nothing is left spooled."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got, statuses = [], iter([503, 503])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = next(statuses, 200)
            if status == 200:
                got.extend(json.loads(line) for line in body.split(b"\n"))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spool = venv.root / "spool"
        p = venv.flowlog("capture", "-r", str(ICMP), "--to", f"post+http://127.0.0.1:{server.server_port}/in",
                         "--spool", str(spool), "--stats", FLOWLOG_RETRY_BASE="0.01", FLOWLOG_RETRY_MAX="0.05")
    finally:
        server.shutdown()
        server.server_close()
    assert p.returncode == 0, p.stderr
    text = venv.flowlog("capture", "-r", str(ICMP)).stdout.splitlines()
    assert [" ".join("-" if r[f] is None else str(r[f]) for f in V2_FIELDS) for r in got] == text
    assert re.search(r"retries\s+2\b", p.stderr) and re.search(r"waiting in the spool: records\s+0\b", p.stderr)
    assert not list(spool.rglob("*.batch"))
