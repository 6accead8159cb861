"""The HTTP API as a Ray Serve application on a local Ray cluster (CPU, tiny models), against the single-process
server: the same answers for every mode and for /translate, with two replicas of a source and of a target deployment
(each request's work done once), and no request lost or hung when a replica is killed mid-run."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, ray_serve

pytestmark = pytest.mark.slow

TEXT = "the old mill of Varn was built in 1874 by Quill Halvard"
PROMPT = " question: who built the mill? answer:"


@pytest.fixture(scope="module")
def ray_server(
    tiny_dirs: dict[str, Path], tiny_maps: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    work_log = tmp_path_factory.mktemp("ray") / "work.jsonl"
    settings = {
        "models": f"llama={tiny_dirs['llama']},gemma3={tiny_dirs['gemma3']}",
        "maps": str(tiny_maps),
        "prepare_maps": False,
        "max_text_chars": 2000,
        "max_new_tokens": 64,
    }
    # Two replicas of the llama source and of the gemma3 target.
    replicas = {"source-llama": 2, "target-gemma3": 2}
    with ray_serve(
        settings, {**{f"{r}-{m}": 1 for r in ("source", "target") for m in ("llama", "gemma3")}, **replicas}, work_log
    ) as server:
        yield server, work_log


def request(mode: str, source: str = "llama", target: str = "gemma3", **extra: object) -> dict[str, object]:
    return {
        "source": source,
        "target": target,
        "text": TEXT,
        "prompt": PROMPT,
        "mode": mode,
        "max_new_tokens": 8,
        **extra,
    }


def same(got: httpx.Response, want: httpx.Response) -> None:
    assert got.status_code == want.status_code == 200, (got.text, want.text)
    g, w = got.json(), want.json()
    keys = ("text", "finish_reason", "usage", "source_layer", "target_layer", "method", "mode")
    assert {k: g[k] for k in keys} == {k: w[k] for k in keys}


CASES = [
    request("native"),
    request("embeds", method="affine"),
    request("embeds", method="affine", grid="target"),
    request("replace", layer=1),
    request("full", layer=2),
    request("last_token", layer=1),
    request("replace", source="gemma3", target="llama", layer=1),
    request("native", source="gemma3", target="llama"),
]


def case_id(b: dict[str, Any]) -> str:
    return f"{b['source']}->{b['target']}-{b['mode']}-{b.get('grid', 'source')}"


@pytest.mark.parametrize("body", CASES, ids=case_id)
def test_ray_answers_like_the_single_process_server(ray_server, server: Server, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    ray_s, _ = ray_server
    with ray_s.client() as r, server.client() as s:
        same(r.post("/generate", json=body), s.post("/generate", json=body))


def test_ray_translate_and_errors_like_the_single_process_server(ray_server, server: Server) -> None:  # type: ignore[no-untyped-def]
    ray_s, _ = ray_server
    body = {
        "source": "llama",
        "target": "gemma3",
        "text": TEXT,
        "return_states": "list",
        "top_k": 2,
        "compare_native": True,
    }
    with ray_s.client() as r, server.client() as s:
        got, want = r.post("/translate", json=body), s.post("/translate", json=body)
        assert got.status_code == want.status_code == 200, got.text
        g, w = got.json(), want.json()
        assert (g["tokens"], g["shape"], g["method"]) == (w["tokens"], w["shape"], w["method"])
        assert [[e["id"] for e in row] for row in g["logit_lens"]] == [
            [e["id"] for e in row] for row in w["logit_lens"]
        ]
        assert abs(g["native_cosine"]["mean"] - w["native_cosine"]["mean"]) < 1e-4
        # Errors are the same 4xx as the single-process server's.
        for bad in (
            {**request("embeds"), "target": "nope"},
            {**request("replace", layer=9)},
            {**request("embeds"), "text": ""},
        ):
            got, want = r.post("/generate", json=bad), s.post("/generate", json=bad)
            assert got.status_code == want.status_code and got.status_code in (400, 404, 422), (got.text, want.text)
            assert got.json()["error"] == want.json()["error"]
        models = {m["alias"]: m for m in r.get("/v1/models").json()["models"]}
        assert (
            models["gemma3"]["fingerprint"]
            == {m["alias"]: m for m in s.get("/v1/models").json()["models"]}["gemma3"]["fingerprint"]
        )


def test_ray_streams(ray_server) -> None:  # type: ignore[no-untyped-def]
    ray_s, _ = ray_server
    with ray_s.client() as c, c.stream("POST", "/generate", json=request("embeds", stream=True)) as r:
        assert r.status_code == 200
        body = r.read().decode()
    assert body.count("data: ") >= 2 and "event: done" in body


def test_two_replicas_do_each_request_once_with_the_same_answers(ray_server, server: Server) -> None:  # type: ignore[no-untyped-def]
    ray_s, work_log = ray_server
    bodies = [request("embeds", text=f"{TEXT} number {i}", method="affine") for i in range(8)]
    with server.client() as s:
        want = [s.post("/generate", json=b).json()["text"] for b in bodies]
    start = len(work_log.read_text().splitlines()) if work_log.exists() else 0
    with ray_s.client() as r, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: r.post("/generate", json=b), bodies))
    assert [g.status_code for g in got] == [200] * 8
    assert [g.json()["text"] for g in got] == want
    lines = [json.loads(x) for x in work_log.read_text().splitlines()[start:]]
    per_request = Counter((x["request"], x["kind"]) for x in lines)
    assert len({x["request"] for x in lines}) == 8
    assert set(per_request.values()) == {1}, per_request  # projected once and decoded once, never twice
    replicas = {(x["deployment"], x["replica"]) for x in lines}
    assert {d for d, _ in replicas} == {"source-llama", "target-gemma3"}


def test_killing_replicas_mid_run_loses_no_request(ray_server) -> None:  # type: ignore[no-untyped-def]
    import ray

    ray_s, _ = ray_server
    bodies = [request("embeds", text=f"{TEXT} run {i}", method="affine", max_new_tokens=64) for i in range(16)]
    with ray_s.client() as r, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(r.post, "/generate", json=b) for b in bodies]
        time.sleep(0.5)
        running = sum(not f.done() for f in futures)
        named = ray.util.list_named_actors(all_namespaces=True)
        for deployment in ("target-gemma3", "source-llama"):  # one of the two replicas of each
            victims = [a for a in named if deployment in a["name"]]
            assert len(victims) == 2, named
            ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]))
        answers = [f.result(timeout=240) for f in futures]
    print("running at the kill:", running, "answers:", Counter(a.status_code for a in answers))
    assert running > 0  # the kill came mid-run
    for a in answers:
        assert a.status_code in (200, 503), a.text
        if a.status_code == 503:
            assert a.headers.get("retry-after") and a.json()["error"] == "not_ready"
    assert sum(a.status_code == 200 for a in answers) >= 1
    # Serve replaces the lost replica, and the service answers again.
    with ray_s.client() as r:
        deadline = time.monotonic() + 120
        while (resp := r.post("/generate", json=request("embeds", method="affine"))).status_code != 200:
            assert time.monotonic() < deadline, resp.text
            time.sleep(1)
