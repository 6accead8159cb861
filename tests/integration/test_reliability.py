"""Reliability over real HTTP: one error shape for every status, bad input refused alone, abandoned and overdue work
stopped, load answered with 200 or 503, SIGTERM bounded."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import EXTERNAL, Server, special_server, start_server, stop_server, tiny_env

TEXT = "the old mill of Varn was built in 1874 by Quill Halvard"
PROMPT = " question: who built the mill? answer:"


def _req(pair: dict, **change: object) -> dict:
    return {"source": pair["source"], "target": pair["target"], "text": TEXT, "prompt": PROMPT, **change}


def _is_error_body(r: httpx.Response) -> bool:
    body = r.json()
    return set(body) == {"error", "detail"} and isinstance(body["detail"], str) and body["detail"] != ""


@pytest.mark.parametrize(
    "raw,field",
    [
        ('"temperature": NaN', "temperature"),
        ('"top_p": Infinity', "top_p"),
        ('"text": "a\\ud800b"', "text"),
        ('"seed": 18446744073709551616', "seed"),
        ('"temprature": 0.9', "temprature"),
        (f'"stop": ["{"x" * 300}"]', "stop"),
        ('"stop": ["", "b"]', "stop"),
        ('"stop": ["1","2","3","4","5","6","7","8","9"]', "stop"),
        ('"timeout_s": -1', "timeout_s"),
    ],
)
def test_bad_fields_are_422_naming_the_field(server: Server, pair: dict, raw: str, field: str) -> None:
    base = json.dumps(_req(pair, max_new_tokens=2))[:-1]
    with server.client() as c:
        r = c.post("/generate", content=f"{base}, {raw}}}", headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert _is_error_body(r) and r.json()["error"] == "invalid_request"
    assert field in r.json()["detail"]


def test_framework_errors_share_the_error_shape(server: Server, pair: dict) -> None:
    with server.client() as c:
        responses = {
            "unknown route": c.get("/nope"),
            "wrong method": c.get("/generate"),
            "broken JSON": c.post("/generate", content=b"{", headers={"content-type": "application/json"}),
            "not UTF-8": c.post(
                "/generate", content=b'{"text": "\xff\xfe"}', headers={"content-type": "application/json"}
            ),
            "no body": c.post("/translate"),
        }
    for what, r in responses.items():
        assert 400 <= r.status_code < 500, (what, r.status_code)
        assert _is_error_body(r), (what, r.text)
    assert responses["wrong method"].status_code == 405 and "allow" in responses["wrong method"].headers


def test_a_bad_request_is_refused_alone_while_its_neighbours_decode(server: Server, pair: dict) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            good = [c.post("/generate", json=_req(pair, max_new_tokens=3, seed=i)) for i in range(3)]
            bad = c.post("/generate", json=_req(pair, max_new_tokens=3, seed=2**64))
            return await asyncio.gather(bad, *good)

    bad, *good = asyncio.run(run())
    assert bad.status_code == 422 and "seed" in bad.json()["detail"]
    assert [r.status_code for r in good] == [200, 200, 200]


def test_body_over_the_limit_is_413_before_parsing(
    tiny_dirs: dict[str, Path], tiny_maps: Path, limited: Server
) -> None:
    with limited.client() as c:
        big = c.post("/generate", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"})
        small = c.post("/generate", json={"source": "llama", "target": "gemma3", "text": "x", "max_new_tokens": 1})
    assert big.status_code == 413 and _is_error_body(big) and "INTERLINGUA_MAX_BODY_BYTES" in big.json()["detail"]
    assert small.status_code == 200, small.text


def test_openapi_documents_the_error_body_and_the_bearer_scheme(server: Server) -> None:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())
    for path in ("/generate", "/translate"):
        responses = spec["paths"][path]["post"]["responses"]
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "HTTPValidationError" not in json.dumps(spec)


def test_translate_reports_its_total_time(server: Server, pair: dict) -> None:
    with server.client() as c:
        body = c.post("/translate", json={"source": pair["source"], "target": pair["target"], "text": TEXT}).json()
    timings = body["timings_ms"]
    assert {"encode", "project", "total"} <= set(timings) and timings["total"] >= timings["encode"]


@pytest.mark.parametrize("timeout_s", [5e-324, 0.001])
def test_a_request_past_its_own_timeout_s_is_a_client_error(server: Server, pair: dict, timeout_s: float) -> None:
    """``timeout_s`` is a deadline the client chose: past it the answer is 408 ``timeout``, not a server error
    (5e-324 s, the smallest positive float, answered 504 before)."""
    with server.client() as c:
        r = c.post("/generate", json=_req(pair, max_new_tokens=50, timeout_s=timeout_s))
        ok = c.post("/generate", json=_req(pair, max_new_tokens=2, timeout_s=60))
    assert r.status_code == 408, r.text
    assert r.json()["error"] == "timeout" and "timeout_s" in r.json()["detail"] and _is_error_body(r)
    assert ok.status_code == 200


def test_a_vanishing_temperature_answers_the_greedy_text(server: Server, pair: dict) -> None:
    """temperature 5e-324 (found by fuzzing: a 500) is the limit of sampling as the temperature falls: greedy."""
    with server.client() as c:
        tiny = c.post("/generate", json=_req(pair, max_new_tokens=6, temperature=5e-324, seed=3))
        greedy = c.post("/generate", json=_req(pair, max_new_tokens=6))
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["text"] == greedy.json()["text"]


@pytest.fixture(scope="module")
def impatient(
    tiny_dirs: dict[str, Path], tiny_maps: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server whose own limit on a request's time is shorter than a generation of 60 tokens takes."""
    env = tiny_env(tiny_dirs, tiny_maps, INTERLINGUA_REQUEST_TIMEOUT_S="0.05")
    yield from special_server(env, tmp_path_factory, "impatient")


@pytest.mark.parametrize("timeout_s", [None, 60])
def test_a_request_past_the_servers_own_limit_gets_504(impatient: Server, pair: dict, timeout_s: float | None) -> None:
    """The server's limit (INTERLINGUA_REQUEST_TIMEOUT_S) is the server's doing: 504, also where the client asked
    for longer."""
    body = _req(pair, max_new_tokens=60) | ({} if timeout_s is None else {"timeout_s": timeout_s})
    with impatient.client() as c:
        r = c.post("/generate", json=body)
    assert r.status_code == 504, r.text
    assert r.json()["error"] == "timeout" and "INTERLINGUA_REQUEST_TIMEOUT_S" in r.json()["detail"]


@pytest.mark.parametrize("mode", ["native", "replace"])
def test_requests_beyond_the_models_positions_are_422(server: Server, pair: dict, mode: str) -> None:
    """The tiny models take 512 positions; 1,800 characters of an unseen letter pair are more tokens than that."""
    with server.client() as c:
        r = c.post("/generate", json=_req(pair, text="zq" * 900, mode=mode, max_new_tokens=2))
        short = c.post("/generate", json=_req(pair, mode=mode, max_new_tokens=2))
    assert r.status_code == 422 and "at most 512" in r.json()["detail"], r.text
    assert short.status_code == 200


def _stopped(server: Server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf'interlingua_stopped_total{{reason="{reason}"}} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def limited(tiny_dirs: dict[str, Path], tiny_maps: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a small body limit and long generations allowed."""
    env = tiny_env(tiny_dirs, tiny_maps, INTERLINGUA_MAX_BODY_BYTES="2048", INTERLINGUA_MAX_NEW_TOKENS="400")
    yield from special_server(env, tmp_path_factory, "limited")


def test_a_disconnected_stream_stops_its_generation(limited: Server) -> None:
    req = {"source": "gemma3", "target": "llama", "text": TEXT, "prompt": PROMPT, "mode": "native"}
    with limited.client() as c:
        full = c.post("/generate", json={**req, "max_new_tokens": 400})
        assert full.status_code == 200
        if full.json()["finish_reason"] != "length":
            pytest.skip("the tiny model ends this text early; nothing long to cancel")
        before = _stopped(limited, "abandoned")
        with c.stream("POST", "/generate", json={**req, "max_new_tokens": 400, "stream": True}) as r:
            next(r.iter_lines())  # one event, then hang up
        deadline = time.monotonic() + 20
        while _stopped(limited, "abandoned") <= before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stopped(limited, "abandoned") == before + 1
        start = time.perf_counter()
        assert c.post("/translate", json={"source": "gemma3", "target": "llama", "text": TEXT}).status_code == 200
        assert time.perf_counter() - start < full.elapsed.total_seconds()  # the slot is free, not busy decoding


def test_48_clients_get_200_or_503_and_health_answers(server: Server, pair: dict) -> None:
    async def run() -> tuple[list[httpx.Response], list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            work = asyncio.gather(*(c.post("/generate", json=_req(pair, max_new_tokens=4, seed=i)) for i in range(48)))
            health = []
            task = asyncio.ensure_future(work)
            while not task.done():
                health.append((await c.get("/health", timeout=5)).status_code)
                await asyncio.sleep(0.2)
            return await task, health

    start = time.perf_counter()
    responses, health = asyncio.run(run())
    codes = [r.status_code for r in responses]
    print(
        f"48 clients: {codes.count(200)} x 200, {codes.count(503)} x 503 in {time.perf_counter() - start:.1f} s; "
        f"{len(health)} /health probes, all {set(health)}"
    )
    assert {r.status_code for r in responses} <= {200, 503}
    assert all("retry-after" in r.headers for r in responses if r.status_code == 503)
    assert sum(r.status_code == 200 for r in responses) >= 1
    assert health and set(health) == {200}


def test_sigterm_drains_then_exits_in_bounded_time(
    tiny_dirs: dict[str, Path], tiny_maps: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if EXTERNAL:
        pytest.skip("needs a locally started server")
    env = tiny_env(tiny_dirs, tiny_maps, INTERLINGUA_SHUTDOWN_GRACE_S="2", INTERLINGUA_MAX_NEW_TOKENS="400")
    s = start_server(env, tmp_path_factory.mktemp("log") / "term.log")
    try:
        req = {"source": "gemma3", "target": "llama", "text": TEXT, "prompt": PROMPT, "max_new_tokens": 3}

        async def run() -> httpx.Response:
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                task = asyncio.ensure_future(c.post("/generate", json=req))
                await asyncio.sleep(0.3)
                assert s.process is not None
                s.process.send_signal(signal.SIGTERM)
                return await task

        r = asyncio.run(run())
        assert r.status_code in (200, 503)  # finished within the grace period, or refused cleanly
        start = time.monotonic()
        assert s.process is not None
        s.process.wait(timeout=30)
        assert time.monotonic() - start < 30
    finally:
        stop_server(s)
