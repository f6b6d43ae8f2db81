"""The protocol core is sans-I/O: importing it never pulls in asyncio, sockets or websockets.

Checked in a fresh interpreter, comparing ``sys.modules`` before and after the imports. The
``spacenb`` package itself is stubbed there (its ``__path__`` set, its ``__init__`` not
run), so the check sees what the core modules import, whatever the top-level package
chooses to import for the synchronous facade.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import spacenb.protocol

PACKAGE_DIR = Path(spacenb.protocol.__file__).resolve().parents[1]
CORE_MODULES = [
    *sorted(f"spacenb.protocol.{m.name}" for m in pkgutil.iter_modules(spacenb.protocol.__path__)),
    # the bottom modules every layer shares (tests/test_layers.py checks the directions)
    "spacenb.exceptions",
    "spacenb.clock",
    "spacenb.typing",
    "spacenb.units",
    "spacenb.privatefile",
]
FORBIDDEN = ("asyncio", "websockets", "socket", "selectors", "ssl")
OTHER_LAYERS = ("spacenb.server", "spacenb.aio", "spacenb.sync", "spacenb.widgets")

PROBE = """
import importlib, json, sys, types
package = types.ModuleType("spacenb")
package.__path__ = [sys.argv[1]]
sys.modules["spacenb"] = package
before = set(sys.modules)
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def imported_by_core() -> list[str]:
    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(PACKAGE_DIR), json.dumps(CORE_MODULES)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    new: list[str] = json.loads(result.stdout)
    return new


def test_core_module_list_is_complete() -> None:
    for expected in ("crypto", "encoding", "envelope", "frames", "keyring", "keys", "wrap"):
        assert f"spacenb.protocol.{expected}" in CORE_MODULES


def test_core_imports_no_io_layer() -> None:
    new = imported_by_core()
    assert set(CORE_MODULES) <= set(new)  # the probe did import them
    offending = [name for name in new if name.split(".")[0] in FORBIDDEN]
    assert offending == []
    reaching_up = [name for name in new if name.startswith(OTHER_LAYERS)]
    assert reaching_up == []
