"""Small JSON results kept on disk between runs (the models' sampled passages, the target's answers to probes)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cached_json(
    cache: Path | None, kind: str, fingerprint: str, key: Any, compute: Callable[[], list[Any]]
) -> list[Any]:
    """``compute()``, kept as JSON under ``cache/kind/<fingerprint>-<hash of key>.json`` when ``cache`` is given and
    read back from there on later calls (written atomically, so an interrupted run leaves no partial file)."""
    if cache is None:
        return compute()
    digest = hashlib.sha256(json.dumps([fingerprint, key]).encode()).hexdigest()[:12]
    path = cache / kind / f"{fingerprint}-{digest}.json"
    if path.exists():
        return list(json.loads(path.read_text(encoding="utf-8")))
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out), encoding="utf-8")
    tmp.replace(path)
    return out
