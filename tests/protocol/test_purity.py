"""The protocol core is sans-I/O: importing it never pulls in asyncio, sockets or websockets.
The relay core (:mod:`spacenb.server.core`, its request table and handlers, the storage
interface) is transport-free: it reaches storage, but never asyncio or websockets.

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
# The relay core over abstract storage: no transport, and nothing of the serving layer.
RELAY_CORE_MODULES = [
    "spacenb.server.core",
    "spacenb.server.handlers",
    "spacenb.server.storage",
    "spacenb.server.limits",
]
RELAY_ADAPTERS = ("spacenb.server.relay", "spacenb.server.app", "spacenb.server.cluster",
                  "spacenb.server.pglive", "spacenb.server.connections",
                  "spacenb.server.postgres", "spacenb.server.pgschema",
                  "spacenb.server.sqlite")  # fmt: skip
OTHER_LAYERS = ("spacenb.server", "spacenb.aio", "spacenb.sync", "spacenb.widgets")

PROBE = """
import importlib, json, sys, types
package = types.ModuleType("spacenb")
package.__path__ = [sys.argv[1]]
sys.modules["spacenb"] = package
server = types.ModuleType("spacenb.server")  # its __init__ starts servers: not run
server.__path__ = [sys.argv[1] + "/server"]
sys.modules["spacenb.server"] = server
before = set(sys.modules)
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def imported_by_core(modules: list[str] = CORE_MODULES) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(PACKAGE_DIR), json.dumps(modules)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    new: list[str] = json.loads(result.stdout)
    return new


def test_core_module_list_is_complete() -> None:
    for expected in (
        "crypto", "encoding", "envelope", "frames", "invitelinks", "keyring", "keys",
        "relayrules", "stateevent", "statelog", "wrap",
    ):  # fmt: skip
        assert f"spacenb.protocol.{expected}" in CORE_MODULES


def test_core_imports_no_io_layer() -> None:
    new = imported_by_core()
    assert set(CORE_MODULES) <= set(new)  # the probe did import them
    offending = [name for name in new if name.split(".")[0] in FORBIDDEN]
    assert offending == []
    reaching_up = [name for name in new if name.startswith(OTHER_LAYERS)]
    assert reaching_up == []


def test_relay_core_imports_no_transport() -> None:
    new = imported_by_core(RELAY_CORE_MODULES)
    assert set(RELAY_CORE_MODULES) <= set(new)
    offending = [name for name in new if name.split(".")[0] in FORBIDDEN]
    assert offending == []
    serving = [name for name in new if name.startswith(RELAY_ADAPTERS)]
    assert serving == []
    reaching_up = [name for name in new if name.startswith(OTHER_LAYERS[1:])]
    assert reaching_up == []
