"""Packaging: every subpackage is listed, the core never imports click, and the wheel holds every module.

The repository's cli/, core/ and plugins/ install as flowlog.cli, flowlog.core and
flowlog.plugins through setuptools ``package-dir``; a subpackage missing from
``[tool.setuptools] packages`` still imports in an editable install and breaks only the
wheel, so these tests look at the files and at a real wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
ICMP = REPO / "tests" / "data" / "captures" / "icmp.pcap"


def _py_files(top: str) -> list[Path]:
    return sorted(p for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts)


def _module_files() -> dict[str, Path]:
    """Installed path (``flowlog/core/api.py``) to repository file, for every module of every package."""
    out = {}
    for package, top in PACKAGE_DIR.items():
        for f in _py_files(top):
            out["/".join([*package.split("."), *f.relative_to(REPO / top).parts])] = f
    return out


def _module_names(package: str) -> list[str]:
    """Every module of ``package`` (``flowlog.core``) and its subpackages, from the repository's files."""
    names = []
    for installed in _module_files():
        parts = installed.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if name == package or name.startswith(package + "."):
            names.append(name)
    return sorted(names)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def test_package_dir_maps_the_top_level_directories():
    assert PACKAGE_DIR == {"flowlog.cli": "cli", "flowlog.core": "core", "flowlog.plugins": "plugins"}


def test_every_subpackage_is_listed():
    expected = set()
    for package, top in PACKAGE_DIR.items():
        for d in {f.parent for f in _py_files(top)}:
            expected.add(".".join([package, *d.relative_to(REPO / top).parts]))
    listed = set(SETUPTOOLS["packages"])
    missing = sorted(expected - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    stale = sorted(listed - expected)
    assert not stale, f"[tool.setuptools] packages lists {stale}, which have no .py files"


def _imported(modules: list[str], tmp_path: Path) -> set[str]:
    """sys.modules after importing ``modules`` in a fresh interpreter (outside the repository)."""
    code = ("import importlib, json, sys\n"
            "for m in json.loads(sys.argv[1]):\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(modules)], capture_output=True, text=True,
                       cwd=tmp_path, env=_clean_env(), timeout=120)
    assert p.returncode == 0, (f"{p.stderr}\n(a module added since the editable install? "
                               f"run: pip install -e . --config-settings editable_mode=strict)")
    return set(json.loads(p.stdout))


def test_core_never_imports_click(tmp_path):
    modules = _module_names("flowlog.core")
    assert "flowlog.core" in modules and "flowlog.core.plugins" in modules
    loaded = _imported(modules, tmp_path)
    assert set(modules) <= loaded
    assert not {m for m in loaded if m == "click" or m.startswith("click.")}, "flowlog.core imports click"
    # the check can see click: the command line does import it
    assert "click" in _imported(["flowlog.cli.main"], tmp_path)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built by pip from a copy of the repository (an in-tree build leaves build/ behind)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for top in (*PACKAGE_DIR.values(), "man"):
        shutil.copytree(REPO / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = root / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, cwd=root, env=_clean_env(), timeout=600)
    assert p.returncode == 0, (
        f"pip wheel failed (building offline needs setuptools>=70.1, or setuptools>=68 with the 'wheel' "
        f"package, in this environment):\n{p.stdout}\n{p.stderr}")
    wheels = list(out.glob("flowlog-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_every_module(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    missing = sorted(set(_module_files()) - names)
    assert not missing, f"the wheel lacks {missing}: is every package listed in [tool.setuptools] packages?"
    assert not [n for n in names if n.startswith(("tests/", "cli/", "core/", "plugins/"))]
    assert "flowlog = flowlog.cli.main:main" in entry_points
    assert any(n.endswith(".data/data/share/man/man1/flowlog.1") for n in names), "the man page is not installed"
    assert any(n.endswith(".data/data/share/man/man7/flowlog-plugins.7") for n in names), \
        "flowlog-plugins.7 is not installed"


def test_wheel_runs_on_its_own(wheel, tmp_path):
    """The unpacked wheel, first on sys.path, imports every module from itself and runs a capture."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    env = _clean_env(PYTHONPATH=str(site), FLOWLOG_LOAD_PLUGINS="")
    modules = sorted({n for pkg in PACKAGE_DIR for n in _module_names(pkg)} - {"flowlog.cli.__main__"})
    code = ("import importlib, json, sys\n"
            "print(json.dumps({m: importlib.import_module(m).__file__ for m in json.loads(sys.argv[1])}))\n")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(modules)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    elsewhere = {m: f for m, f in json.loads(p.stdout).items() if not Path(f).is_relative_to(site)}
    assert not elsewhere, f"not in the wheel, found elsewhere: {elsewhere}"

    p = subprocess.run([sys.executable, "-m", "flowlog.cli", "capture", "-r", str(ICMP)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 2
