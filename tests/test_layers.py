"""The folder tree is the layer diagram (README, "Layout"): every import points down.

Each module of the package is read with ``ast`` (nothing is imported, so imports inside
functions and under ``TYPE_CHECKING`` count too) and each ``spacenb`` import it makes is
checked against the rooms its room may use. ``tests/protocol/test_purity.py`` checks the
other half: that the bottom and the protocol core pull in no I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import spacenb

PACKAGE = Path(spacenb.__file__).resolve().parent

# The package's own modules that every layer shares (they import nothing of spacenb).
BOTTOM = {"_deprecated", "clock", "exceptions", "privatefile", "typing", "units"}
# Old module paths that forward, deprecated, to where a module moved (see _deprecated).
MOVED = {"dataframes", "display", "events", "tutorial"}
# Entry points: the lazy top-level face, ``python -m spacenb`` and the command line.
ENTRY = {"__init__", "__main__", "cli"}
# The signature-check worker runs as ``python -m spacenb._verify_worker`` beside the async
# client (top level, so it starts without loading aio): it sits where aio does.
WORKERS = {"_verify_worker": "aio"}

ALLOWED: dict[str, set[str]] = {
    "bottom": {"bottom"},
    "moved": {"bottom"},
    "protocol": {"bottom", "protocol"},
    "aio": {"bottom", "protocol", "aio"},
    "server": {"bottom", "protocol", "server"},
    "widgets": {"bottom", "aio", "widgets"},
    "sync": {"bottom", "aio", "server", "widgets", "sync"},
    "entry": {"bottom", "protocol", "aio", "server", "widgets", "sync", "entry"},
}
# (importing module, imported module): the only import that crosses a wall, each with why.
EXCEPTIONS = {
    # python-api.md names ``await spacenb.aio.serve()``: the async face's one bridge to the
    # relay, imported only when called (the sync facade starts the relay itself).
    ("spacenb.aio", "spacenb.server.app"),
}


def room(module: str) -> str:
    """The layer a module (``spacenb.x.y``) lives in."""
    parts = module.split(".")[1:]
    if not parts:
        return "entry"
    top = parts[0]
    if len(parts) == 1 and top in BOTTOM:
        return "bottom"
    if len(parts) == 1 and top in MOVED:
        return "moved"
    if len(parts) == 1 and top in ENTRY:
        return "entry"
    if top in WORKERS:
        return WORKERS[top]
    if (PACKAGE / top).is_dir():
        return top
    raise AssertionError(f"{module} is in no room: add it to BOTTOM, ENTRY or a package")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["spacenb", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """Every spacenb module ``module`` imports (``from pkg import name`` counts as pkg.name
    when that is a module, else as pkg)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "spacenb")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "spacenb":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                as_module = PACKAGE.joinpath(*sub.split(".")[1:])
                is_module = as_module.is_dir() or as_module.with_suffix(".py").exists()
                found.add(sub if is_module else target)
    return found


EDGES = [(m, imported) for m, path in modules() for imported in sorted(imports_of(m, path))]


def test_every_module_has_a_room() -> None:
    rooms = {room(m) for m, _ in modules()}
    assert rooms <= set(ALLOWED)
    assert len(EDGES) > 100  # the walk did see the package's imports


def test_every_import_points_down() -> None:
    wrong = [
        f"{module} ({room(module)}) imports {imported} ({room(imported)})"
        for module, imported in EDGES
        if (module, imported) not in EXCEPTIONS and room(imported) not in ALLOWED[room(module)]
    ]
    assert wrong == []


def test_exceptions_are_still_needed() -> None:
    assert set(EDGES) >= EXCEPTIONS


def test_the_check_catches_a_wrong_direction(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from ..sync.space import Space\nfrom ..protocol import frames\n")
    assert imports_of("spacenb.widgets.bad", bad) == {
        "spacenb.sync.space",
        "spacenb.protocol.frames",
    }
    assert room("spacenb.sync.space") not in ALLOWED["widgets"]
    assert room("spacenb.protocol.frames") not in ALLOWED["widgets"]
