"""The one rule that picks a handover's maps (``aligners.resolve.choose``), on hand-made manifest entries."""

from __future__ import annotations

from typing import Any

import pytest

from aligners.resolve import TRANSLATE, Need, choose
from aligners.store import MapKey, MapNotFoundError

# What the runtime's modes need (service.runtime.modes says the same; tests/runtime/test_modes.py checks it).
NEEDS = {
    "embeds": Need("embeds", fixed_layer=0),
    "replace": Need("replace"),
    "last_token": Need("last_token"),
    "full": Need("full", per_layer=True),
    "translate": TRANSLATE,
}


def entry(ls: int, lt: int, method: str, kl: float | None = None, r2: float = 0.5, helper: bool = False) -> dict:
    e: dict[str, Any] = {"source": "a", "target": "b", "source_layer": ls, "target_layer": lt, "method": method}
    e["metrics"] = {"r2": r2, **({} if kl is None else {"kl": kl})}
    return {**e, **({"helper": True} if helper else {})}


STORE = [
    entry(4, 0, "distill", kl=0.2),
    entry(6, 0, "linear", kl=0.5),
    entry(4, 2, "distill", kl=0.1),
    entry(6, 2, "linear", kl=0.3),
    entry(0, 0, "linear", kl=0.9, helper=True),
    entry(2, 1, "linear", kl=0.8, helper=True),
]


def key(ls: int, lt: int, method: str) -> MapKey:
    return MapKey("a", "b", ls, lt, method)


def test_each_mode_gets_its_best_map() -> None:
    assert choose(STORE, "a", "b", NEEDS["embeds"]) == (key(4, 0, "distill"), [])
    assert choose(STORE, "a", "b", NEEDS["replace"]) == (key(4, 2, "distill"), [])
    assert choose(STORE, "a", "b", NEEDS["last_token"]) == (key(4, 2, "distill"), [])
    # full injects what replace does; each layer below gets the map that would serve a handover into it: the best
    # map into layer 0 (what embeds serves), and into layer 1, where nothing else enters, the per-layer helper.
    assert choose(STORE, "a", "b", NEEDS["full"]) == (
        key(4, 2, "distill"),
        [key(4, 0, "distill"), key(2, 1, "linear")],
    )
    assert choose(STORE, "a", "b", NEEDS["full"], method="linear") == (
        key(6, 2, "linear"),
        [key(4, 0, "distill"), key(2, 1, "linear")],
    )


def test_translate_takes_the_pairs_default_at_any_layer() -> None:
    default = {"source_layer": 6, "target_layer": 0, "method": "linear"}
    assert choose(STORE, "a", "b", NEEDS["translate"], default=default) == (key(6, 0, "linear"), [])
    assert choose(STORE, "a", "b", NEEDS["translate"]) == (
        key(4, 2, "distill"),
        [],
    )  # best score otherwise


def test_named_layer_method_and_source_layer_narrow_the_choice() -> None:
    assert choose(STORE, "a", "b", NEEDS["replace"], layer=0) == (key(4, 0, "distill"), [])
    assert choose(STORE, "a", "b", NEEDS["embeds"], method="linear") == (key(6, 0, "linear"), [])
    assert choose(STORE, "a", "b", NEEDS["replace"], method="linear", source_layers=(6,))[0] == key(6, 2, "linear")


def test_maps_from_concatenated_layers_are_their_own_maps() -> None:
    concat = {**entry(2, 0, "linear", kl=0.05), "source_layers": [0, 2]}
    plain = entry(2, 0, "linear", kl=0.4)
    both = [concat, plain]
    assert (
        MapKey.from_entry(concat) == MapKey("a", "b", 2, 0, "linear", (0,)) == MapKey.of("a", "b", (0, 2), 0, "linear")
    )
    assert MapKey.from_entry(concat).relpath == "a__b/L0+2-L0/linear.safetensors"
    assert MapKey.from_entry(plain).relpath == "a__b/L2-L0/linear.safetensors"
    assert MapKey.from_entry(concat).as_dict()["source_layers"] == [0, 2]
    assert "source_layers" not in MapKey.from_entry(plain).as_dict()  # single-layer records stay as they were
    assert choose(both, "a", "b", NEEDS["embeds"])[0] == MapKey.from_entry(concat)  # best score
    assert choose(both, "a", "b", NEEDS["embeds"], source_layers=(2,))[0] == MapKey.from_entry(plain)
    # The pair's default names its source layers: the plain map's record does not name the concatenated one.
    default = {"source_layer": 2, "target_layer": 0, "method": "linear"}
    assert choose(both, "a", "b", NEEDS["embeds"], default=default)[0] == MapKey.from_entry(plain)


def test_helper_maps_serve_embeds_only_when_nothing_else_does_and_never_replace() -> None:
    helpers = [e for e in STORE if e.get("helper")]
    assert choose(helpers, "a", "b", NEEDS["embeds"]) == (key(0, 0, "linear"), [])
    with pytest.raises(MapNotFoundError, match="available"):
        choose(helpers, "a", "b", NEEDS["replace"], layer=1)


def test_without_proxy_scores_the_best_r2_wins_and_bad_requests_are_refused() -> None:
    plain = [entry(4, 2, "affine", r2=0.7), entry(6, 2, "affine", r2=0.8)]
    assert choose(plain, "a", "b", NEEDS["replace"])[0] == key(6, 2, "affine")
    with pytest.raises(ValueError, match="layer 0"):
        choose(STORE, "a", "b", NEEDS["embeds"], layer=2)
    with pytest.raises(MapNotFoundError, match="no maps for b -> a"):
        choose(STORE, "b", "a", NEEDS["replace"])
    without_layer_1 = [e for e in STORE if e["target_layer"] != 1]
    with pytest.raises(MapNotFoundError, match=r"per-layer.*a__b/L\*-L1.*--full"):
        choose(without_layer_1, "a", "b", NEEDS["full"])
