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
