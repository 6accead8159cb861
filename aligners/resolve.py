"""Which stored maps serve a handover: one rule, used by the server, ``eval`` and the benchmarks alike.

A request names a direction and what its mode needs (``Need``: the runtime's modes describe themselves with one),
and optionally the target layer, the method and (``eval``) the source layer(s).
Candidates are the pair's maps that are not helper maps (per-layer maps only ``full`` needs), narrowed by what the
request names; the best-scored candidate wins (lowest ranking proxy where the fit measured one, else best task F1 from
``eval``, else best held-out R²):
- ``embeds`` enters at layer 0: the best map into layer 0 (a helper map into layer 0 when nothing else is there);
- ``replace``, ``last_token``: the best map into the named layer, or, with no layer named, the best map into a layer
  above 0 (layer 0 would make ``replace`` the same as ``embeds``), else into 0;
- ``full``: as ``replace``, among maps with some map into every layer below; each layer below is fed by the map that
  would serve a handover into it (the best-scored; a per-layer helper where nothing else enters that layer);
- ``translate`` (``/translate``): any layer; the pair's default map when nothing is named.
Among equals the pair's default map (the manifest's) comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aligners.store import MapKey, MapNotFoundError, same_map


def score(entry: dict[str, Any]) -> float:
    """Lower is better: the proxy the fit ranked by (``proxy``), else the in-source proxy KL, else −F1 from ``eval``,
    else −R², else +inf."""
    metrics = entry.get("metrics", {})
    for name in ("proxy", "kl"):
        if name in metrics:
            return float(metrics[name])
    if "f1" in entry.get("eval", {}):
        return -float(entry["eval"]["f1"])
    return -float(metrics.get("r2", float("-inf")))


def _per_layer(entries: list[dict[str, Any]], key: MapKey) -> tuple[list[MapKey], str]:
    """The maps ``full`` feeds the blocks below ``key``'s target layer with, one per layer: the best-scored map into
    that layer (a per-layer helper map only where nothing else enters it), and the first layer none enters ("" if
    none)."""
    chain: list[MapKey] = []
    lacking = ""
    for k in range(key.target_layer):
        into = [e for e in entries if e["target_layer"] == k]
        if not into:
            lacking = lacking or f"{key.source}__{key.target}/L*-L{k}"
            continue
        chain.append(_key(min(into, key=lambda e: (bool(e.get("helper")), score(e)))))
    return chain, lacking


@dataclass(frozen=True)
class Need:
    """What a handover mode needs of its maps (the runtime's ``HandoverMode`` says; this package cannot import it):
    a ``fixed_layer`` it always injects at, maps into every layer below (``per_layer``), or any layer with the pair's
    default first (``any_layer``: ``/translate``); ``name`` for messages."""

    name: str
    fixed_layer: int | None = None
    per_layer: bool = False
    any_layer: bool = False


TRANSLATE = Need("translate", any_layer=True)


def choose(
    entries: list[dict[str, Any]],
    source: str,
    target: str,
    need: Need,
    layer: int | None = None,
    method: str | None = None,
    source_layers: tuple[int, ...] | None = None,
    default: dict[str, Any] | None = None,
) -> tuple[MapKey, list[MapKey]]:
    """(the map whose target layer is the injection layer, the per-layer maps a ``per_layer`` mode needs below it).

    Preference: the named ``source_layers`` (one, or several concatenated), then the pair's ``default`` (manifest
    entry), then the score."""
    mode = need.name
    if need.fixed_layer is not None:
        if layer not in (None, need.fixed_layer):
            raise ValueError(f"mode {mode!r} injects at layer {need.fixed_layer}, got layer={layer}")
        layer = need.fixed_layer
    pair = [e for e in entries if e["source"] == source and e["target"] == target]
    if not pair:
        raise MapNotFoundError(f"no maps for {source} -> {target}")
    named = [
        e for e in pair if (method is None or e["method"] == method) and (layer is None or e["target_layer"] == layer)
    ]
    candidates = [e for e in named if not e.get("helper")]
    if not need.any_layer and layer is None and any(e["target_layer"] > 0 for e in candidates):
        candidates = [e for e in candidates if e["target_layer"] > 0]
    if need.fixed_layer is not None and not candidates:
        candidates = named  # helper maps into the fixed layer still serve
    chains: dict[str, list[MapKey]] = {}
    missing: list[str] = []
    if need.per_layer:
        kept = []
        for e in candidates:
            key = _key(e)
            chain, lacking = _per_layer(pair, key)
            if lacking:
                if lacking not in missing:  # candidates into one layer lack the same layers below
                    missing.append(lacking)
            else:
                chains[key.relpath] = chain
                kept.append(e)
        candidates = kept
    if not candidates:
        have = sorted({(e["target_layer"], e["method"]) for e in pair if not e.get("helper")})
        why = (
            f" with per-layer maps into every layer below (missing {', '.join(missing)}; fit with --full)"
            if need.per_layer
            else ""
        )
        into = "any layer" if layer is None else f"layer {layer}"
        raise MapNotFoundError(
            f"no {method + ' ' if method else ''}map into {target} {into} for {source} -> {target} in mode "
            f"{mode!r}{why}; available (target layer, method): {have}"
        )
    default = default or {}

    def other_layers(e: dict[str, Any]) -> bool:
        return source_layers is not None and _key(e).source_layers != tuple(source_layers)

    best = min(candidates, key=lambda e: (other_layers(e), not same_map(default, e), score(e)))
    key = _key(best)
    return key, chains.get(key.relpath, [])


def _key(entry: dict[str, Any]) -> MapKey:
    return MapKey.from_entry(entry)
