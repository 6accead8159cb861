"""The Ray Serve application on the real pair answers like ``make serve``: the same greedy tokens for every mode in
both directions, and the same /translate, from the same bundled default maps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import Server, ray_serve

pytestmark = [pytest.mark.real, pytest.mark.slow]

CONTEXT = "Ysolde Marrow built a lighthouse in Quillmere in 1874. It was later run by Corin Aske."
QUESTION = "\nQuestion: Who ran the lighthouse later?\nAnswer:"
KEYS = ("text", "finish_reason", "usage", "source_layer", "source_layers", "target_layer", "method", "mode")


@pytest.fixture(scope="module")
def ray_real(default_server: Server) -> Iterator[Server]:
    assert default_server.log is not None
    maps = default_server.log.parent / "maps"  # where the single-process server installed the bundled maps
    settings = {"maps": str(maps), "prepare_maps": False}  # the real pair, by default
    with ray_serve(settings, {f"{r}-{m}": 1 for r in ("source", "target") for m in ("smollm2", "gemma3")}) as server:
        yield server


def test_every_mode_in_both_directions_like_the_single_process_server(ray_real: Server, default_server: Server) -> None:
    differ = []
    with ray_real.client() as r, default_server.client() as s:
        for source, target in (("smollm2", "gemma3"), ("gemma3", "smollm2")):
            for mode in ("native", "embeds", "replace", "full", "last_token"):
                body = {
                    "source": source,
                    "target": target,
                    "text": CONTEXT,
                    "prompt": QUESTION,
                    "mode": mode,
                    "max_new_tokens": 8,
                }
                got, want = r.post("/generate", json=body), s.post("/generate", json=body)
                assert got.status_code == want.status_code == 200, (got.text, want.text)
                if {k: got.json()[k] for k in KEYS} != {k: want.json()[k] for k in KEYS}:
                    differ.append((source, target, mode, got.json()["text"], want.json()["text"]))
        body = {"source": "smollm2", "target": "gemma3", "text": CONTEXT, "top_k": 1, "return_states": "base64"}
        got, want = r.post("/translate", json=body).json(), s.post("/translate", json=body).json()
    assert differ == []
    assert (got["tokens"], got["logit_lens"], got["states"]) == (want["tokens"], want["logit_lens"], want["states"])
