"""The map store: ``DIR/<source>__<target>/L<ℓs>-L<ℓt>/<method>.safetensors`` plus ``DIR/manifest.json``.

The manifest lists every map with its metadata and metrics, and names a default map per (source, target) pair:
the lowest proxy KL (or best held-out R² without a proxy) after ``fit``, the best task F1 after ``eval`` screening.
Which maps serve a request is ``aligners.resolve``'s rule. Maps record both models' fingerprints; using a
map with a model whose fingerprint differs is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aligners import Aligner, load

MANIFEST = "manifest.json"
T = TypeVar("T")


def matching_layer(layer: int, n_from: int, n_to: int) -> int:
    """The layer of a model with ``n_to`` blocks at the same relative depth as ``layer`` of one with ``n_from``."""
    return min(n_to, max(0, round(layer * n_to / n_from)))


# The one ranking rule: for these metrics a lower score is better, for every other (R², F1, ...) a higher one.
# ``proxy``: a map's score by the proxy its fit ranked by (``kl`` or ``kl_xsrc``, as served).
LOWER_IS_BETTER = ("kl", "kl_xsrc", "proxy", "nll")


def rank_key(metric: str, score: float) -> float:
    """A sort key under which the best score of ``metric`` comes first."""
    return score if metric in LOWER_IS_BETTER else -score


def best_first(metric: str, scored: list[tuple[float, T]]) -> list[tuple[float, T]]:
    """``(score, thing)`` pairs, best score of ``metric`` first; ties keep their order."""
    return sorted(scored, key=lambda st: rank_key(metric, st[0]))


class MapMismatchError(ValueError):
    """A map fitted for other models than the ones it is used with."""


class MapNotFoundError(LookupError):
    """No map in the store matches the request."""


# The fields that name one map of a pair (``source_layers`` only where several source layers are concatenated).
IDENTITY = ("source_layer", "source_layers", "target_layer", "method")


def same_map(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two manifest records (entries or defaults) name the same map of a pair."""
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in IDENTITY)


def layers_name(layers: tuple[int, ...]) -> str:
    """``(2,)`` -> ``"2"``; concatenated source layers ``(0, 2)`` -> ``"0+2"``."""
    return "+".join(str(layer) for layer in layers)


@dataclass(frozen=True)
class MapKey:
    """One map of a store. Its input is the source's states at ``source_layer``, or, with ``extra_layers`` (lower
    source layers), the states at ``(*extra_layers, source_layer)`` concatenated per token in that order."""

    source: str
    target: str
    source_layer: int
    target_layer: int
    method: str
    extra_layers: tuple[int, ...] = ()

    @classmethod
    def of(cls, source: str, target: str, source_layers: tuple[int, ...], target_layer: int, method: str) -> MapKey:
        """The key of a map from the concatenated ``source_layers`` (ascending; the deepest is ``source_layer``)."""
        return cls(source, target, source_layers[-1], target_layer, method, tuple(source_layers[:-1]))

    @classmethod
    def from_entry(cls, entry: dict[str, Any], source: str | None = None, target: str | None = None) -> MapKey:
        """The key of a manifest entry (or default record), optionally under other model names."""
        layers = tuple(entry.get("source_layers") or (entry["source_layer"],))
        return cls.of(
            source or entry["source"], target or entry["target"], layers, entry["target_layer"], entry["method"]
        )

    @property
    def source_layers(self) -> tuple[int, ...]:
        return (*self.extra_layers, self.source_layer)

    @property
    def pair(self) -> str:
        return f"{self.source}__{self.target}"

    @property
    def layers_label(self) -> str:
        return f"L{layers_name(self.source_layers)}->L{self.target_layer}"

    @property
    def relpath(self) -> str:
        return f"{self.pair}/L{layers_name(self.source_layers)}-L{self.target_layer}/{self.method}.safetensors"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "source_layer": self.source_layer,
            **({"source_layers": list(self.source_layers)} if self.extra_layers else {}),
            "target_layer": self.target_layer,
            "method": self.method,
        }


def check_fingerprints(meta: dict[str, Any], source_fp: str, target_fp: str, where: str) -> None:
    for side, have in (("source", source_fp), ("target", target_fp)):
        want = meta.get(f"{side}_fingerprint")
        if want != have:
            raise MapMismatchError(
                f"{where}: fitted for {side} model {meta.get(side)!r} with fingerprint {want}, but the loaded "
                f"{side} model has fingerprint {have}: refit the map for this model"
            )


def load_checked(path: str | os.PathLike[str], source_fp: str, target_fp: str) -> tuple[Aligner, dict[str, Any]]:
    """Load a map file and refuse it (``MapMismatchError``) if it was fitted for other models than these."""
    aligner, meta = load(path)
    check_fingerprints(meta, source_fp, target_fp, str(path))
    return aligner, meta


class MapStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format_version": 1, "maps": [], "defaults": {}}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.manifest_path}: corrupt manifest ({err})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, self.manifest_path)

    def save(
        self, key: MapKey, aligner: Aligner, metadata: dict[str, Any], metrics: dict[str, float], helper: bool = False
    ) -> Path:
        """Write one map file and record it in the manifest (replacing an entry with the same key). ``helper`` marks
        a per-layer map only the ``full`` mode needs: never a default candidate."""
        path = self.root / key.relpath
        aligner.save(str(path), {**metadata, **key.as_dict(), "metrics": metrics})
        manifest = self.manifest()
        entries = [e for e in manifest["maps"] if e["path"] != key.relpath]
        entries.append(
            {
                **key.as_dict(),
                "path": key.relpath,
                "metrics": metrics,
                "source_fingerprint": metadata.get("source_fingerprint"),
                "target_fingerprint": metadata.get("target_fingerprint"),
                **({"helper": True} if helper else {}),
            }
        )
        manifest["maps"] = sorted(entries, key=lambda e: e["path"])
        self.write_manifest(manifest)
        return path

    def entries(self, source: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.manifest()["maps"]
            if (source is None or e["source"] == source) and (target is None or e["target"] == target)
        ]

    def set_default(self, source: str, target: str, entry: dict[str, Any], by: str) -> None:
        manifest = self.manifest()
        manifest["defaults"][f"{source}__{target}"] = {k: entry[k] for k in IDENTITY if k in entry} | {"by": by}
        self.write_manifest(manifest)

    def choose_defaults(self, by: str = "r2") -> list[str]:
        """Per pair, the map with the best ``metrics[by]`` (or ``eval[by]`` when present) becomes the default: the
        highest, or for ``kl`` the lowest. Helper maps are no candidates; when every candidate scores the same the
        default stays. Returns a line per changed default."""
        changes = []
        defaults = self.manifest().get("defaults", {})
        for source, target in sorted({(e["source"], e["target"]) for e in self.entries()}):
            scored = [
                (e.get("eval", {}).get(by, e["metrics"].get(by)), e)
                for e in self.entries(source, target)
                if not e.get("helper")
            ]
            scored = [(s, e) for s, e in scored if s is not None and s == s]
            if not scored or (len({s for s, _ in scored}) == 1 and f"{source}__{target}" in defaults):
                continue
            best = best_first(by, scored)[0][1]
            old = defaults.get(f"{source}__{target}", {})
            if not same_map(old, best):
                key = MapKey.from_entry(best)
                changes.append(f"default {source} -> {target}: {key.method} {key.layers_label} (best {by})")
            self.set_default(source, target, best, by)
        return changes

    def default(self, source: str, target: str) -> MapKey:
        d = self.manifest()["defaults"].get(f"{source}__{target}")
        if d is None:
            raise MapNotFoundError(
                f"no default map for {source} -> {target} in {self.root}; pairs with maps: "
                f"{sorted({e['source'] + ' -> ' + e['target'] for e in self.entries()})}"
            )
        return MapKey.from_entry(d, source, target)

    def load(
        self, key: MapKey, source_fp: str | None = None, target_fp: str | None = None
    ) -> tuple[Aligner, dict[str, Any]]:
        """Load one map; with fingerprints given, refuse a map fitted for other models."""
        path = self.root / key.relpath
        if not path.exists():
            have = [e["path"] for e in self.entries(key.source, key.target)]
            raise MapNotFoundError(f"no map {key.relpath} in {self.root}; maps for this pair: {have or 'none'}")
        if source_fp is not None and target_fp is not None:
            return load_checked(path, source_fp, target_fp)
        return load(path)

    def copy_from(self, other: MapStore, keys: list[MapKey], names: dict[str, str] | None = None) -> list[MapKey]:
        """Copy maps (files and manifest entries, defaults of their pairs included) from ``other``; ``names`` renames
        models (other's name -> this store's name). Returns the keys as written here."""
        names = names or {}
        source_manifest, manifest = other.manifest(), self.manifest()
        by_path = {e["path"]: e for e in source_manifest["maps"]}
        written = []
        for key in keys:
            entry = by_path.get(key.relpath)
            if entry is None:
                raise MapNotFoundError(f"no map {key.relpath} in {other.root}")
            new = MapKey.of(
                names.get(key.source, key.source),
                names.get(key.target, key.target),
                key.source_layers,
                key.target_layer,
                key.method,
            )
            (self.root / new.relpath).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(other.root / key.relpath, self.root / new.relpath)
            manifest["maps"] = [e for e in manifest["maps"] if e["path"] != new.relpath]
            manifest["maps"].append({**entry, **new.as_dict(), "path": new.relpath})
            default = source_manifest.get("defaults", {}).get(key.pair)
            if default is not None:
                manifest["defaults"][new.pair] = default
            written.append(new)
        manifest["maps"] = sorted(manifest["maps"], key=lambda e: e["path"])
        self.write_manifest(manifest)
        return written

    def for_models(self, fingerprints: dict[str, str]) -> list[tuple[MapKey, dict[str, str]]]:
        """The maps fitted for models with these fingerprints (alias -> fingerprint), whatever names the store gives
        them: (key, {stored name: alias})."""
        alias_of = {fp: alias for alias, fp in fingerprints.items()}
        out = []
        for e in self.entries():
            src, tgt = alias_of.get(e.get("source_fingerprint", "")), alias_of.get(e.get("target_fingerprint", ""))
            if src is not None and tgt is not None:
                key = MapKey.from_entry(e)
                out.append((key, {e["source"]: src, e["target"]: tgt}))
        return out
