"""The tutorial notebooks' shape: what nbval does not check.

nbval (``pytest --nbval notebooks/ --nbval-sanitize-with tests/nbval_sanitize.cfg``) re-runs
each notebook and compares outputs. These tests read the saved files only, and check what
makes a notebook a good tutorial and a fair test: it was saved fully executed, top to
bottom; it gets its relay from ``open_server``; it ends with an exercise and a cell
that checks it (a collapsed solution only inside the exercise); its outputs leak no paths
or host names of the machine that ran it; only a minority of cells opt out of comparison;
it teaches protocol v2, not the byte layouts v1 had; and ``notebooks/README.md`` lists it.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
IGNORE_MARKER = "# NBVAL_IGNORE_OUTPUT"
MAX_NOTEBOOK_BYTES = 2 << 20
README = REPO / "notebooks" / "README.md"

# What protocol v1 had and v2 removed or changed: a notebook that still uses one of these
# teaches byte layouts (or calls) that no longer exist.
V1_ONLY = {
    "spacenb/v1/envelope": "envelopes are signed under spacenb/v2/envelope/<kind>",
    "spacenb/v1/aad": "the associated data is labelled spacenb/v2/aad/<kind>",
    "spacenb/v1/create-space": "a space is created by its signed genesis (statelog.make_genesis)",
    "create_space_signed_bytes": "a space is created by its signed genesis (statelog.make_genesis)",
}

Notebook = dict[str, Any]


def _source(cell: Notebook) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "".join(value)


def _code_cells(nb: Notebook) -> list[Notebook]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def _hidden(cell: Notebook) -> bool:
    return bool(cell.get("metadata", {}).get("jupyter", {}).get("source_hidden"))


def _ignored(cell: Notebook) -> bool:
    return _source(cell).startswith(IGNORE_MARKER)


def _headings(cell: Notebook) -> list[str]:
    return re.findall(r"^#+\s*(.+?)\s*$", _source(cell), flags=re.MULTILINE)


def _output_texts(cell: Notebook) -> list[str]:
    """Every piece of text a code cell's saved outputs would show (images excluded)."""
    texts = []
    for output in cell.get("outputs", []):
        kind = output["output_type"]
        if kind == "stream":
            texts.append(_text(output["text"]))
        elif kind in ("execute_result", "display_data"):
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    texts.append(_text(value))
        elif kind == "error":
            texts.append("\n".join(output.get("traceback", [])))
    return texts


def _local_names() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    return {name for name in names if name and name not in ("localhost",) and len(name) > 2}


# Absolute paths as a POSIX or Windows machine would print them.
_ABSOLUTE_PATH = re.compile(
    r"(?<![\w.:/~-])/(?:tmp|home|root|Users|var|work|private|opt|usr|etc|srv|mnt|run)/"
    r"|\b[A-Za-z]:\\\\?[\w.-]"
)


@pytest.fixture(params=NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def notebook(request: pytest.FixtureRequest) -> tuple[Path, Notebook]:
    path: Path = request.param
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks under notebooks/"


def test_names_are_numbered_and_unique() -> None:
    numbers = []
    for path in NOTEBOOKS:
        match = re.fullmatch(r"(\d\d)_[a-z0-9_]+\.ipynb", path.name)
        assert match, f"{path.name}: name notebooks NN_lower_case_words.ipynb"
        numbers.append(match.group(1))
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {numbers}"


def test_valid_and_small(notebook: tuple[Path, Notebook]) -> None:
    path, nb = notebook
    nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: the kernel must be python3 (what nbval and Binder start)"
    )
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name}: over 2 MiB (large images?)"


def test_saved_fully_executed_top_to_bottom(notebook: tuple[Path, Notebook]) -> None:
    path, nb = notebook
    counts = [cell.get("execution_count") for cell in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts}: save it executed in one fresh run "
        "(jupyter nbconvert --execute --inplace)"
    )


def test_no_error_outputs(notebook: tuple[Path, Notebook]) -> None:
    """Failures shown on purpose are caught and printed, so the notebook runs to the end."""
    path, nb = notebook
    for index, cell in enumerate(_code_cells(nb), 1):
        tags = cell.get("metadata", {}).get("tags", [])
        errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
        assert not errors or "raises-exception" in tags, (
            f"{path.name}, code cell {index}: raised {errors[0].get('ename')}"
        )


def test_starts_its_relay_with_open_server(notebook: tuple[Path, Notebook]) -> None:
    """Every relay a notebook uses comes from ``open_server`` (embedded, or Binder's), and
    no cell starts one another way. A notebook may teach offline steps before it."""
    path, nb = notebook
    sources = [_source(cell) for cell in _code_cells(nb)]
    assert any("open_server(" in src for src in sources), (
        f"{path.name}: start the relay with spacenb.sync.tutorial.open_server(), so the notebook "
        "runs on its own and on Binder"
    )
    assert not any(re.search(r"spacenb\.(aio\.)?serve\(", src) for src in sources), (
        f"{path.name}: use spacenb.sync.tutorial.open_server(), not spacenb.serve()"
    )


def test_ends_with_an_exercise_and_its_check(notebook: tuple[Path, Notebook]) -> None:
    """The last section is "Exercise" with a checking cell (only "Clean up" may follow)."""
    path, nb = notebook
    cells = nb["cells"]
    exercise = [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "markdown"
        and any(h.lower().startswith("exercise") for h in _headings(cell))
    ]
    assert exercise, f"{path.name}: no '## Exercise' section"
    start = exercise[-1]
    checks = [
        i
        for i in range(start + 1, len(cells))
        if cells[i]["cell_type"] == "code" and re.search(r"^\s*assert\b", _source(cells[i]), re.M)
    ]
    assert checks, f"{path.name}: the exercise has no cell that checks it with assert"
    for cell in cells[start + 1 :]:
        for heading in _headings(cell) if cell["cell_type"] == "markdown" else []:
            assert heading.lower().startswith("clean up"), (
                f"{path.name}: section {heading!r} comes after the exercise"
            )
    for cell in cells[checks[-1] + 1 :]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), (
                f"{path.name}: after the exercise's check, only silent clean-up code"
            )


def test_collapsed_code_is_only_an_exercise_solution(notebook: tuple[Path, Notebook]) -> None:
    """A collapsed cell (``{"jupyter": {"source_hidden": true}}``) hides a worked solution
    from whoever does the exercise: it belongs after the exercise's heading, comes after a
    first run of the check, is followed by the final check, and prints nothing itself."""
    path, nb = notebook
    cells = nb["cells"]
    hidden = [i for i, cell in enumerate(cells) if _hidden(cell)]
    if not hidden:
        return
    exercise = max(
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "markdown"
        and any(h.lower().startswith("exercise") for h in _headings(cell))
    )
    for i in hidden:
        cell = cells[i]
        assert cell["cell_type"] == "code" and i > exercise, (
            f"{path.name}, cell {i}: only an exercise's solution is collapsed"
        )
        assert not cell.get("outputs"), (
            f"{path.name}, cell {i}: a collapsed solution prints nothing"
        )
        before = [c for c in cells[exercise + 1 : i] if c["cell_type"] == "code"]
        after = [c for c in cells[i + 1 :] if c["cell_type"] == "code"]
        assert len(before) >= 2, (
            f"{path.name}, cell {i}: the learner's stub and a first check come before the solution"
        )
        assert any(re.search(r"^\s*assert\b", _source(c), re.M) for c in after), (
            f"{path.name}, cell {i}: a check with assert must run after the solution"
        )


def test_teaches_protocol_v2(notebook: tuple[Path, Notebook]) -> None:
    path, nb = notebook
    for index, cell in enumerate(nb["cells"]):
        for name, instead in V1_ONLY.items():
            assert name not in _source(cell), f"{path.name}, cell {index}: {name} is v1 ({instead})"


def test_readme_lists_every_notebook() -> None:
    listed = re.findall(
        r"^\| \[[^]]+\]\((\d\d_[a-z0-9_]+\.ipynb)\) \|", README.read_text("utf-8"), re.M
    )
    names = [path.name for path in NOTEBOOKS]
    assert listed == names, (
        f"notebooks/README.md's table lists {listed}, the directory holds {names}: one row per "
        "notebook, in order"
    )


def test_outputs_hold_no_local_paths_or_host_names(notebook: tuple[Path, Notebook]) -> None:
    path, nb = notebook
    local = _local_names() | {str(REPO), str(Path.home())}
    for index, cell in enumerate(_code_cells(nb), 1):
        for text in _output_texts(cell):
            found = _ABSOLUTE_PATH.search(text)
            assert found is None, (
                f"{path.name}, code cell {index}: an absolute path in the output: "
                f"...{text[max(0, found.start() - 30) : found.end() + 30]}..."
            )
            for name in local:
                assert not re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text), (
                    f"{path.name}, code cell {index}: output names this machine ({name!r})"
                )


def test_ignored_outputs_are_a_marked_minority(notebook: tuple[Path, Notebook]) -> None:
    path, nb = notebook
    code = _code_cells(nb)
    for index, cell in enumerate(code, 1):
        if IGNORE_MARKER in _source(cell):
            assert _ignored(cell), f"{path.name}, code cell {index}: put {IGNORE_MARKER} first"
    compared = [cell for cell in code if cell.get("outputs") and not _ignored(cell)]
    ignored = [cell for cell in code if _ignored(cell)]
    assert len(ignored) < len(compared), (
        f"{path.name}: {len(ignored)} cells ignore their output and only {len(compared)} "
        "are compared: make outputs deterministic (counts, sorted names, error classes)"
    )


def test_compared_outputs_are_plain(notebook: tuple[Path, Notebook]) -> None:
    """Images and stderr (warnings, log lines) vary from run to run: never compare them."""
    path, nb = notebook
    for index, cell in enumerate(_code_cells(nb), 1):
        if _ignored(cell):
            continue
        for output in cell.get("outputs", []):
            images = [m for m in output.get("data", {}) if m.startswith("image/")]
            assert not images, (
                f"{path.name}, code cell {index}: a plot in a compared cell: "
                f"start it with {IGNORE_MARKER}"
            )
            stderr = output["output_type"] == "stream" and output["name"] == "stderr"
            assert not stderr, (
                f"{path.name}, code cell {index}: stderr in a compared cell: "
                f"{_text(output['text'])[:200]!r}"
            )
