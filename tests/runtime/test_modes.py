"""The mode registry is the one list of handover modes: the HTTP schema, eval and the vLLM backend read it."""

from __future__ import annotations

import pytest

from service.api.schemas import GenerateRequest
from service.runtime.modes import HANDOVER_MODES, MODES, get_mode


def test_the_http_schema_offers_exactly_the_registered_modes() -> None:
    mode = GenerateRequest.model_json_schema()["properties"]["mode"]  # optional: the enum, or null for the default
    assert [alt.get("enum") for alt in mode["anyOf"]] == [list(MODES), None] and mode["default"] is None
    assert set(HANDOVER_MODES) == set(MODES) - {"native"}


def test_each_mode_knows_its_layers_maps_and_engines() -> None:
    assert get_mode("embeds").layer_for(None) == 0
    with pytest.raises(ValueError, match="injects at layer 0"):
        get_mode("embeds").layer_for(2)
    assert get_mode("replace").layer_for(3) == 3 and get_mode("native").layer_for(3) is None
    assert get_mode("full").map_layers(2) == [0, 1, 2] and get_mode("replace").map_layers(2) == [2]
    assert get_mode("native").map_layers(2) == []
    # What an engine that takes only token ids and input embeddings (vLLM) can run:
    runs = {(name, layer) for name, m in MODES.items() for layer in (0, 2) if m.on_input_embeddings(layer)}
    assert runs == {("native", 0), ("native", 2), ("replace", 0), ("embeds", 0)}
    assert not get_mode("last_token").scores_continuation and get_mode("last_token").needs_suffix
    from tests.unit.test_resolve import NEEDS

    assert {name: m.need for name, m in MODES.items() if m.uses_maps} == {k: v for k, v in NEEDS.items() if k in MODES}
    with pytest.raises(ValueError, match="unknown mode 'teleport'"):
        get_mode("teleport")
