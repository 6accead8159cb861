"""The data flows one way: aligners/ (maps, store, resolver) <- service/runtime <- calibrate/ and service/api."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in _imports(package).items()
        for name in names
        if name.split(".")[0] in forbidden or any(name.startswith(f) for f in forbidden if "." in f)
    ]


def test_aligners_import_nothing_of_the_project() -> None:
    assert _offenders("aligners", ("calibrate", "service")) == []


def test_the_service_never_imports_the_calibration_tool() -> None:
    assert _offenders("service", ("calibrate",)) == []


def test_the_runtime_imports_no_web_code() -> None:
    assert _offenders("service/runtime", ("fastapi", "starlette", "service.api", "calibrate")) == []


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports when it runs: at the top or inside functions (a lazy import is still an
    import), not under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found & modules


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph (as the list of modules around it), or [] where there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_two_files_import_each_other_even_lazily() -> None:
    files = {_module(p): p for pkg in ("aligners", "calibrate", "service") for p in (ROOT / pkg).rglob("*.py")}
    graph = {m: _runtime_imports(p, set(files)) - {m} for m, p in files.items()}
    assert _cycle(graph) == []
    # The check finds a planted one.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
