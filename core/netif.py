"""The host's network interfaces, as capturing sources need to know them."""

from __future__ import annotations

import json
import subprocess


def addresses(iface: str | None) -> list[str]:
    """An interface's own IP addresses (every interface's with None), from ``ip -j addr show``.

    Empty when they cannot be read: flow-direction then stays ``-``.
    """
    cmd = ["ip", "-j", "addr", "show"] + (["dev", iface] if iface else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
        return [a["local"] for entry in json.loads(out) for a in entry.get("addr_info", []) if "local" in a]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return []
