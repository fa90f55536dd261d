"""Helpers shared by the network sinks' tests: the receivers, flowlog as a process, captures, TLS files.

Tests run with ``--import-mode=importlib``: they load this file (and the receivers) by path
with :func:`load`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
DATA = TESTS / "data"

#: Variables that hold credentials: flowlog processes started by tests get only those a test gives.
SECRET_ENV = ("FLOWLOG_ES_API_KEY", "FLOWLOG_ES_USER", "FLOWLOG_ES_PASSWORD", "FLOWLOG_SPLUNK_TOKEN")


def load(name: str):
    """The module ``tests/receivers/NAME.py``, loaded once."""
    key = f"flowlog_tests_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_files(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (made with the openssl command)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
    return str(cert), str(key)


def env(**extra) -> dict[str, str]:
    """The environment of a flowlog process: short retry backoff, no credentials but those given."""
    e = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    e.update(FLOWLOG_RETRY_BASE="0.05", FLOWLOG_RETRY_MAX="0.2", FLOWLOG_LOAD_PLUGINS="")
    e.update({k: v for k, v in extra.items() if v is not None})
    return e


def flowlog_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "flowlog.cli", *map(str, args)]


def flowlog(*args, environ: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(flowlog_cmd(*args), capture_output=True, text=True, env=environ or env(),
                          timeout=timeout)


def start_flowlog(*args, environ: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(flowlog_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environ or env())


def records(capture, *args) -> list[str]:
    """The version-2 lines ``flowlog capture -r CAPTURE`` prints for a capture."""
    p = flowlog("capture", "-r", capture, *args)
    assert p.returncode in (0, 1), p.stderr
    return p.stdout.splitlines()


def synth_capture(path: Path, windows: int = 20, flows: int = 40, start: int = 1_700_000_000) -> Path:
    """A capture of ``flows`` UDP flows in each of ``windows`` one-minute windows (distinct 5-tuples)."""
    synth = _synth()
    frames = []
    for w in range(windows):
        for f in range(flows):
            t = start + 60 * w + f * 0.01
            src = f"10.{w // 250}.{w % 250}.{f % 250 + 1}"
            frames.append((t, synth.packet(src, "192.0.2.9", 17, 10_000 + f, 53, size=40 + f)))
    synth.write_pcap(path, frames)
    return path


def _synth():
    from flowlog.core import synth

    return synth


def start_receiver(name: str, port: int, *args, environ: dict | None = None) -> subprocess.Popen:
    """A receiver as a process of its own on ``port``, once it listens."""
    p = subprocess.Popen([sys.executable, str(HERE / f"{name}.py"), "--port", str(port), *map(str, args)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environ or os.environ)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            if p.poll() is not None:
                raise RuntimeError(f"{name} did not start: {p.stderr.read()}")
            time.sleep(0.05)
    p.kill()
    raise RuntimeError(f"{name} did not listen on {port}")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(predicate, timeout: float = 30, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def multiset(lines) -> Counter:
    return Counter(lines)
