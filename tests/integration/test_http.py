"""The HTTP API end to end: a real server process, real models, real maps, httpx over loopback."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from tests.integration.conftest import EXTERNAL, Server, start_server, stop_server

TEXT = "the old mill of Varn was built in 1874 by Quill Halvard"
PROMPT = " question: who built the mill? answer:"


def test_health_and_ready(server: Server) -> None:
    with server.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_models_lists_models_maps_default_and_refused(server: Server, pair: dict) -> None:
    with server.client() as c:
        body = c.get("/v1/models").json()
    aliases = {m["alias"] for m in body["models"]}
    assert {pair["source"], pair["target"]} <= aliases
    for m in body["models"]:
        assert m["layers"] > 0 and m["hidden_size"] > 0 and len(m["fingerprint"]) == 16
    assert (
        sum(m["default"] for m in body["maps"] if m["source"] == pair["source"] and m["target"] == pair["target"]) == 1
    )
    if not EXTERNAL:
        assert [r["path"].rsplit("/", 1)[1] for r in body["refused_maps"]] == ["stale.safetensors"]
        assert "fingerprint" in body["refused_maps"][0]["reason"]
        assert all(m["method"] != "stale" for m in body["maps"])


def test_translate_states_lens_and_native_cosine(server: Server, pair: dict) -> None:
    req = {
        "source": pair["source"],
        "target": pair["target"],
        "text": TEXT,
        "return_states": "base64",
        "top_k": 3,
        "compare_native": True,
    }
    with server.client() as c:
        r = c.post("/translate", json=req)
        listed = c.post("/translate", json={**req, "return_states": "list", "top_k": 0, "compare_native": False})
    assert r.status_code == 200, r.text
    body = r.json()
    n, d = body["shape"]
    assert n == len(body["tokens"]) > 0
    assert body["tokens"][0]["start"] == 0 and body["tokens"][-1]["end"] == len(TEXT)
    states = np.frombuffer(base64.b64decode(body["states"]["data"]), dtype="<f2").reshape(n, d)
    as_list = np.array(listed.json()["states"]["data"], dtype=np.float32)
    np.testing.assert_allclose(states.astype(np.float32), as_list, rtol=2e-3, atol=2e-2)
    assert len(body["logit_lens"]) == n and all(len(row) == 3 for row in body["logit_lens"])
    assert all(row[0]["prob"] >= row[1]["prob"] for row in body["logit_lens"])
    cos = body["native_cosine"]
    assert len(cos["per_position"]) == n and -1 <= cos["mean"] <= 1
    assert {"encode", "project"} <= set(body["timings_ms"])
    assert body["target_layer"] == pair["layer"] and body["method"] == pair["method"]


@pytest.mark.parametrize("mode", ["replace", "full", "last_token", "embeds", "native"])
def test_generate_every_mode(server: Server, pair: dict, mode: str) -> None:
    req = {
        "source": pair["source"],
        "target": pair["target"],
        "text": TEXT,
        "prompt": PROMPT,
        "mode": mode,
        "max_new_tokens": 5,
    }
    with server.client() as c:
        r = c.post("/generate", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == mode and body["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 5 and body["usage"]["target_prompt_tokens"] > 0
    assert (body["usage"]["source_tokens"] == 0) == (mode == "native")
    assert {"generate"} <= set(body["timings_ms"])
    if mode == "embeds":
        assert body["target_layer"] == 0


@pytest.mark.parametrize("layer", [None, 0, 1])
def test_generate_without_a_mode_enters_where_the_map_does(server: Server, pair: dict, layer: int | None) -> None:
    """No `mode`: `embeds` where the handover enters B at layer 0 (the request's layer, else the default map's),
    `replace` otherwise; the same answer as naming that mode."""
    req = {"source": pair["source"], "target": pair["target"], "text": TEXT, "prompt": PROMPT, "max_new_tokens": 4}
    if layer is not None:
        req["layer"] = layer
    entering = pair["layer"] if layer is None else layer
    expected = "embeds" if entering == 0 else "replace"
    with server.client() as c:
        r = c.post("/generate", json=req)
        named = c.post("/generate", json={**req, "mode": expected})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == expected and body["target_layer"] == entering
    assert body["text"] == named.json()["text"]


def test_target_grid_hands_over_one_state_per_target_token(server: Server, pair: dict) -> None:
    req = {**pair, "text": TEXT, "prompt": "", "mode": "embeds", "max_new_tokens": 2}
    req.pop("layer", None)
    with server.client() as c:
        on_source = c.post("/generate", json=req).json()["usage"]
        on_target = c.post("/generate", json={**req, "grid": "target"}).json()["usage"]
        native = c.post("/generate", json={**req, "mode": "native"}).json()["usage"]
        bad = c.post("/generate", json={**req, "grid": "both"})
    # The start token, then one position per source token, or one per target token (as many as native reads).
    assert on_source["target_prompt_tokens"] == 1 + on_source["source_tokens"]
    assert on_target["target_prompt_tokens"] == native["target_prompt_tokens"] != on_source["target_prompt_tokens"]
    assert on_target["source_tokens"] == on_source["source_tokens"]
    assert bad.status_code == 422 and "grid" in bad.text


def test_seeded_sampling_and_greedy_are_reproducible(server: Server, pair: dict) -> None:
    req = {"source": pair["source"], "target": pair["target"], "text": TEXT, "prompt": PROMPT, "max_new_tokens": 8}
    with server.client() as c:
        greedy = [c.post("/generate", json=req).json()["text"] for _ in range(2)]
        sampled = [c.post("/generate", json={**req, "temperature": 1.0, "seed": 7}).json()["text"] for _ in range(2)]
    assert greedy[0] == greedy[1] and sampled[0] == sampled[1]


def test_streaming_sends_deltas_then_the_full_response(server: Server, pair: dict) -> None:
    req = {"source": pair["source"], "target": pair["target"], "text": TEXT, "prompt": PROMPT, "max_new_tokens": 6}
    with server.client() as c:
        plain = c.post("/generate", json=req).json()
        with c.stream("POST", "/generate", json={**req, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = r.read().decode()
    events = [block for block in raw.split("\n\n") if block.strip()]
    deltas = [json.loads(b.removeprefix("data: ")) for b in events if b.startswith("data: ")]
    assert events[-1].startswith("event: done")
    final = json.loads(events[-1].split("data: ", 1)[1])
    assert len(deltas) == final["usage"]["completion_tokens"] + (final["finish_reason"] == "stop")
    assert "".join(d["delta"] for d in deltas) == final["text"] == plain["text"]


@pytest.mark.parametrize(
    "path,change,status,words",
    [
        ("/generate", {"source": "nope"}, 404, ["unknown model 'nope'", "loaded models"]),
        ("/generate", {"method": "warp"}, 404, ["no warp map", "available"]),
        ("/generate", {"layer": 99}, 422, ["layer must be in"]),
        ("/generate", {"mode": "embeds", "layer": 2}, 422, ["embeds"]),
        ("/generate", {"mode": "teleport"}, 422, ["mode"]),
        ("/generate", {"max_new_tokens": 100000}, 422, ["max_new_tokens"]),
        ("/generate", {"temperature": -1}, 422, ["temperature"]),
        ("/generate", {"text": ""}, 422, ["text"]),
        ("/generate", {"mode": "last_token", "prompt": ""}, 422, ["needs a prompt"]),
        ("/generate", {"text": "x" * 5000}, 413, ["at most"]),
        ("/translate", {"top_k": 100}, 422, ["top_k"]),
        ("/translate", {"target": "nope"}, 404, ["unknown model 'nope'"]),
        ("/translate", {"text": "y" * 5000}, 413, ["at most"]),
    ],
)
def test_bad_requests_get_clear_4xx(
    server: Server, pair: dict, path: str, change: dict, status: int, words: list[str]
) -> None:
    if EXTERNAL and status == 413:
        pytest.skip("the deployment's text limit is its own")
    req = {"source": pair["source"], "target": pair["target"], "text": TEXT, **change}
    if path == "/generate":
        req.setdefault("prompt", PROMPT)
    with server.client() as c:
        r = c.post(path, json=req)
        assert r.status_code == status, r.text
        for word in words:
            assert word in r.text
        assert c.get("/health").status_code == 200  # and the server lives on


def test_full_mode_without_per_layer_maps_is_404(server: Server, pair: dict) -> None:
    if EXTERNAL:
        pytest.skip("depends on the local map store")
    req = {"source": "gemma3", "target": "llama", "text": TEXT, "prompt": PROMPT, "mode": "full", "layer": 2}
    with server.client() as c:
        missing = c.post("/generate", json=req)  # no gemma3 -> llama map enters layer 0
        present = c.post("/generate", json={**req, "source": pair["source"], "target": pair["target"]})
    assert missing.status_code == 404
    assert "gemma3__llama/L*-L0" in missing.text and "--full" in missing.text
    assert present.status_code == 200


def test_metrics_and_docs(server: Server) -> None:
    with server.client() as c:
        c.get("/health")
        text = c.get("/metrics").text
        assert "interlingua_requests_total" in text and "interlingua_request_seconds_bucket" in text
        assert "interlingua_queue_depth" in text
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
    assert {"/translate", "/generate", "/v1/models", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    assert "examples" in json.dumps(spec["components"]["schemas"]["GenerateRequest"])


def test_sixteen_concurrent_clients(server: Server, pair: dict) -> None:
    async def one(client: httpx.AsyncClient, i: int) -> int:
        mode = ["replace", "native"][i % 2]
        r = await client.post(
            "/generate",
            json={
                "source": pair["source"],
                "target": pair["target"],
                "text": TEXT,
                "prompt": PROMPT,
                "mode": mode,
                "max_new_tokens": 6,
            },
        )
        return r.status_code

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    assert asyncio.run(run()) == [200] * 16


def test_api_key(strict_server: Server, pair: dict) -> None:
    req = {"source": pair["source"], "target": pair["target"], "text": TEXT, "max_new_tokens": 2}
    with strict_server.client() as c:
        assert c.get("/health").status_code == 200  # liveness needs no key
        missing = c.post("/generate", json=req)
        wrong = c.post("/generate", json=req, headers={"Authorization": "Bearer nope"})
        right = c.post("/generate", json=req, headers={"Authorization": "Bearer sesame"})
    assert missing.status_code == 401 and wrong.status_code == 401 and "API key" in missing.text
    assert right.status_code == 200


def test_full_queue_answers_503_with_retry_after(strict_server: Server, pair: dict) -> None:
    headers = {"Authorization": "Bearer sesame"}
    req = {"source": pair["source"], "target": pair["target"], "text": TEXT * 3, "prompt": PROMPT, "max_new_tokens": 48}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=strict_server.url, timeout=300, headers=headers) as client:
            return await asyncio.gather(*(client.post("/generate", json=req) for _ in range(8)))

    responses = asyncio.run(run())
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "queue is full" in busy.text


def test_ready_is_503_while_not_loaded(tmp_path_factory: pytest.TempPathFactory) -> None:
    if EXTERNAL:
        pytest.skip("needs a locally started server")
    env = {"INTERLINGUA_MODELS": "ghost=/no/such/model", "INTERLINGUA_PREPARE_MAPS": "false"}
    s = start_server(env, tmp_path_factory.mktemp("log") / "ghost.log", wait_ready=False)
    try:
        with s.client() as c:
            for _ in range(100):
                ready = c.get("/ready")
                if ready.json()["status"] == "failed":
                    break
            assert ready.status_code == 503 and "/no/such/model" in ready.json()["detail"]
            assert ready.json()["missing_models"] == ["ghost"]
            r = c.post("/generate", json={"source": "ghost", "target": "ghost", "text": "x"})
            assert r.status_code == 503 and r.headers["retry-after"]
            assert c.get("/health").status_code == 200
    finally:
        stop_server(s)
