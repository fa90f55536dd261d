#!/usr/bin/env python3
"""Regenerate the golden record files in tests/data/golden/ -- deliberately, never from a test.

    python tests/regen_golden.py            # rewrite every golden file
    python tests/regen_golden.py icmp.pcap  # just one

Read the diff (git diff tests/data/golden) before committing: a changed golden file is a
changed product.
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAPTURES = HERE / "data" / "captures"
GOLDEN = HERE / "data" / "golden"

#: capture -> extra arguments: each golden file is the stdout of `flowlog capture -q -r CAPTURE ARGS`
CASES = json.loads((GOLDEN / "cases.json").read_text())


def golden_name(capture: str) -> str:
    return capture + ".out"


def render(capture: str) -> str:
    args = [sys.executable, "-m", "flowlog.cli", "capture", "-q", "-r", str(CAPTURES / capture), *CASES[capture]]
    return subprocess.run(args, capture_output=True, text=True, check=False).stdout


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    for name in names:
        (GOLDEN / golden_name(name)).write_text(render(name))
        print(f"wrote {GOLDEN / golden_name(name)}")
