"""The man pages in man/: every command and option of the CLI is documented, and groff lints them clean.

The pages are hand-written troff. This test reads their source with a small parser that
knows just enough of the man macros to find section headings and the tags of ``.TP``
items, with the usual escapes undone (``\\-`` is ``-``, font changes vanish), so that
``.BR \\-r ", " \\-\\-read " \\fIfile\\fR"`` reads as the tag ``-r, --read file``.

Where a command is documented: on a page of its own (``man/flowlog-capture.1``) if there
is one, else in a section whose heading starts with the command (``.SS "flowlog capture
..."``). The top-level options go in the OPTIONS section of ``flowlog.1``. ``-h/--help``
may be documented once for every command.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from flowlog.cli.main import main
from flowlog.core import __version__
from flowlog.core.formats import FORMATS
from flowlog.core.frames import LINKTYPES
from flowlog.core.records import EXTRA_FIELDS, V2_FIELDS

MAN = Path(__file__).resolve().parent.parent / "man"
PAGES = sorted(p for p in MAN.glob("*.[1-9]") if p.is_file())
MAIN_PAGE = MAN / "flowlog.1"
PLUGINS_PAGE = MAN / "flowlog-plugins.7"


# -- a little troff reader --------------------------------------------------------------------

_SPECIAL = {"aq": "'", "lq": '"', "rq": '"', "oq": "'", "cq": "'", "dq": '"', "en": "-", "em": "--",
            "hy": "-", "mi": "-", "mu": "x", "ti": "~", "ha": "^", "rs": "\\", "bu": "*"}
_ESCAPE = re.compile(r"\\(\((..)|\[([^\]]*)\]|[fF](?:\[[^\]]*\]|\(..|.)|.)")
#: Macros whose arguments alternate fonts and are joined with no space between them.
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
#: Macros that put their arguments in the text.
_TEXT_MACROS = _ALTERNATING | {"B", "I", "SM", "SB"}
_ARG = re.compile(r'"((?:\\.|""|[^"\\])*)"?|((?:\\.|[^\s\\])+)')


def plain(text: str) -> str:
    """Troff text with its escapes undone: what a reader sees, in ASCII."""

    def repl(m: re.Match) -> str:
        whole, two, bracket = m.group(1), m.group(2), m.group(3)
        if two or bracket:
            return _SPECIAL.get(two or bracket, "")
        c = whole[0]
        if c in "fF":
            return ""
        return {"-": "-", " ": " ", "~": " ", "0": " ", "e": "\\", "\\": "\\", ".": ".", "'": "'",
                '"': ""}.get(c, "")      # \& \% \| \^ \c and the rest print nothing

    return _ESCAPE.sub(repl, text)


def _args(rest: str) -> list[str]:
    out = []
    for m in _ARG.finditer(rest):
        out.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2))
    return out


@dataclass
class Item:
    tag: str
    body: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.body)


@dataclass
class Section:
    page: str
    level: str          # "SH" or "SS"
    heading: str
    lines: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def read_page(path: Path) -> list[Section]:
    """The sections of a man page, each with its plain text and its tagged items."""
    sections: list[Section] = []
    current = Section(path.name, "", "")
    item: Item | None = None
    tag_pending = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r'(?<!\\)\\".*', "", raw)        # comments
        if line[:1] in (".", "'"):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            name, args = parts[0], _args(parts[1]) if len(parts) > 1 else []
            if name in ("SH", "SS"):
                current = Section(path.name, name, plain(" ".join(args)))
                sections.append(current)
                item, tag_pending = None, False
                continue
            if name == "TP":
                tag_pending = True
                continue
            if name == "IP" and args and args[0]:
                item = Item(plain(args[0]))
                current.items.append(item)
                continue
            if name in ("PP", "LP", "P"):
                item = None
                continue
            if name not in _TEXT_MACROS:
                continue
            text = ("" if name in _ALTERNATING else " ").join(args)
        else:
            text = line
        text = " ".join(plain(text).split())
        if tag_pending:
            item = Item(text)
            current.items.append(item)
            tag_pending = False
        else:
            if item is not None:
                item.body.append(text)
        current.lines.append(text)
    return sections


def words(text: str) -> set[str]:
    """The option-like and other tokens of a text, split at white space and punctuation."""
    return set(re.findall(r"(?<![\w-])(?:--?)?[\w][\w-]*", text))


def option_names(text: str) -> set[str]:
    return {w for w in words(text) if w.startswith("-")}


# -- the CLI's commands ---------------------------------------------------------------------------

def _walk(cmd: click.Command, parent: click.Context | None = None, name: str = "flowlog"):
    ctx = click.Context(cmd, info_name=name, parent=parent, **cmd.context_settings)  # as make_context does
    yield ctx
    if isinstance(cmd, click.Group):
        for sub in cmd.list_commands(ctx):
            child = cmd.get_command(ctx, sub)
            if child is not None and not child.hidden:
                yield from _walk(child, ctx, sub)


COMMANDS = list(_walk(main))


def _options(ctx: click.Context) -> list[click.Option]:
    return [p for p in ctx.command.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]


def _is_help(ctx: click.Context, opt: click.Option) -> bool:
    return set(opt.opts + opt.secondary_opts) == set(ctx.help_option_names)


def _all_sections() -> list[Section]:
    return [s for p in PAGES for s in read_page(p)]


def _sections_for(ctx: click.Context) -> list[Section]:
    """Where a command's options are documented."""
    path = ctx.command_path
    if ctx.parent is None:
        page = MAN / f"{path}.1"
        return [s for s in read_page(page) if s.level == "SH" and s.heading == "OPTIONS"] if page.exists() else []
    own = [p for p in PAGES if p.stem == path.replace(" ", "-") and p.suffix == ".1"]   # not flowlog-plugins.7
    if own:
        return read_page(own[0])
    # a group's own section, not those of its subcommands ("flowlog spool" and "flowlog spool retry ...")
    subs = [f"{path} {name}" for name in (ctx.command.list_commands(ctx) if isinstance(ctx.command, click.Group)
                                          else ())]
    return [s for s in _all_sections() if (s.heading == path or s.heading.startswith(path + " "))
            and not any(s.heading == sub or s.heading.startswith(sub + " ") for sub in subs)]


def _item_for(sections: list[Section], names: list[str]) -> Item | None:
    for s in sections:
        for it in s.items:
            if set(names) <= words(it.tag):
                return it
    return None


# -- tests ---------------------------------------------------------------------------------------

def test_pages_exist():
    assert MAIN_PAGE in PAGES, f"{MAIN_PAGE} is missing"
    assert PLUGINS_PAGE in PAGES, f"{PLUGINS_PAGE} is missing"


def test_plugins_page_documents_the_hooks_and_the_delivery_contract():
    """flowlog-plugins.7 names every hook, and every part of the contract a network sink relies on."""
    import dataclasses

    from flowlog.core import api, hookspecs

    text = " ".join(s.heading + " " + s.text + " " + " ".join(it.tag + " " + it.text for it in s.items)
                    for s in read_page(PLUGINS_PAGE))
    hooks = [n for n, f in vars(hookspecs).items() if hasattr(f, f"{hookspecs.PROJECT}_spec")]
    names = [*hooks, "Source", "Sink", "DeliverySink", "SinkOptions", "Answer", "BatchMeta",
             *(f"Verdict.{v.name}" for v in api.Verdict),
             *(f.name for f in dataclasses.fields(api.Answer)), *(f.name for f in dataclasses.fields(api.BatchMeta)),
             *(f.name for f in dataclasses.fields(api.SinkOptions)),
             "encode", "send", "spool_key", "max_items", "max_bytes", "refuse_secrets", "redact",
             "FLOWLOG_PLUGINS", "FLOWLOG_LOAD_PLUGINS", "FLOWLOG_RETRY_BASE", "FLOWLOG_RETRY_MAX"]
    missing = [n for n in names if n not in text]
    assert not missing, f"{PLUGINS_PAGE.name} does not mention {missing}"


@pytest.mark.parametrize("ctx", COMMANDS, ids=[c.command_path for c in COMMANDS])
def test_every_option_is_documented(ctx):
    """Each option of each command is a tagged item where that command is documented: every
    spelling of it (short and long) in one tag, its choices, and 'Default: X' for the default it shows."""
    sections = _sections_for(ctx)
    where = (f"the OPTIONS section of {ctx.command_path}.1" if ctx.parent is None else
             f"man/{ctx.command_path.replace(' ', '-')}.1 or a section headed '{ctx.command_path} ...'")
    assert sections, f"command {ctx.command_path!r} is not documented: add {where}"
    problems = []
    for opt in _options(ctx):
        names = opt.opts + opt.secondary_opts
        item = _item_for(_all_sections() if _is_help(ctx, opt) else sections, names)
        if item is None:
            problems.append(f"{'/'.join(names)}: no .TP item whose tag names {', '.join(names)} in {where}")
            continue
        if isinstance(opt.type, click.Choice):
            missing = [c for c in opt.type.choices if c not in words(item.tag + " " + item.text)]
            if missing:
                problems.append(f"{names[-1]}: choices {missing} not documented (tag: {item.tag!r})")
        if opt.show_default and not opt.is_flag and not opt.multiple and opt.default is not None:
            if not re.search(rf"\bDefault: {re.escape(str(opt.default))}(?![\w-])", item.text):
                problems.append(f"{names[-1]}: its item does not say 'Default: {opt.default}'")
    for arg in (p for p in ctx.command.params if isinstance(p, click.Argument)):
        if not any(arg.name.lower() in s.text.lower() for s in sections):
            problems.append(f"argument {arg.name.upper()} is not mentioned in {where}")
    assert not problems, f"{ctx.command_path}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("ctx", COMMANDS, ids=[c.command_path for c in COMMANDS])
def test_no_stale_options(ctx):
    """An option documented as an item of a command is one that command has."""
    known = {n for o in _options(ctx) for n in o.opts + o.secondary_opts} | set(ctx.help_option_names)
    stale = sorted({n for s in _sections_for(ctx) for it in s.items for n in option_names(it.tag)} - known)
    assert not stale, f"{ctx.command_path}: the man page documents options it does not have: {stale}"


def test_every_command_is_named_in_the_main_page():
    text = " ".join(s.heading + " " + s.text for s in read_page(MAIN_PAGE))
    for ctx in COMMANDS[1:]:
        assert ctx.command_path in text, f"{ctx.command_path!r} is not named in {MAIN_PAGE.name}"


def test_record_fields_in_order():
    """The 14 version-2 fields are items 1 to 14, in the order of the record."""
    numbered = [tuple(it.tag.split()) for s in read_page(MAIN_PAGE) for it in s.items
                if re.fullmatch(r"\d+ [a-z-]+", it.tag)]
    assert numbered == [(str(i), f) for i, f in enumerate(V2_FIELDS, 1)]


def test_extra_fields_and_formats_are_items():
    tags = {it.tag for s in read_page(MAIN_PAGE) for it in s.items}
    missing = [f for f in (*EXTRA_FIELDS, *FORMATS) if f not in tags]
    assert not missing, f"no item for {missing} in {MAIN_PAGE.name}"


def test_link_types_are_listed():
    sections = [s for s in read_page(MAIN_PAGE) if s.heading == "INPUT"]
    assert sections, "flowlog.1 has no INPUT section"
    numbers = set(re.findall(r"\d+", " ".join(it.tag + " " + it.text for s in sections for it in s.items)))
    missing = sorted(lt for lt in LINKTYPES if str(lt) not in numbers)
    assert not missing, f"link types {missing} are decoded but not listed under INPUT"


def test_title_names_this_version():
    th = next(l for l in MAIN_PAGE.read_text().splitlines() if l.startswith(".TH "))
    assert _args(th[4:])[3] == f"flowlog {__version__}", th


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_pages_are_ascii(page):
    """groff 1.22 reads Latin-1: special characters go in as escapes (\\(en, \\(mu, ...)."""
    bad = [(n, l) for n, l in enumerate(page.read_bytes().splitlines(), 1) if not l.isascii()]
    assert not bad, f"{page.name}: non-ASCII on lines {[n for n, _ in bad]}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_groff_lints_clean(page):
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed: cannot lint the man pages (apt-get install groff)")
    r = subprocess.run([groff, "-man", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, f"groff -man -ww -z {page.name}: exit {r.returncode}\n{r.stderr}"
