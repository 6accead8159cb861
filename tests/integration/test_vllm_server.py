"""A server on vLLM at both ends of a handover (INTERLINGUA_ENCODERS=llama=vllm: the source's states come from a vLLM
pooling engine; INTERLINGUA_BACKENDS=gemma3=vllm: the target decodes on vLLM): `native`, `embeds` and `/translate`
answer as the transformers-only server does; modes that need a middle layer get a 422 naming the backend that serves
them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import EXTERNAL, Server, special_server, tiny_env
from tests.vllm.conftest import require_vllm

pytestmark = pytest.mark.slow

TEXT = "the old mill of Varn was built in 1874 by Quill Halvard"
PROMPT = " question: who built the mill? answer:"


@pytest.fixture(scope="module")
def vllm_server(
    tiny_dirs: dict[str, Path], tiny_maps: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    if not EXTERNAL:
        require_vllm()
    env = tiny_env(
        tiny_dirs,
        tiny_maps,
        INTERLINGUA_BACKENDS="gemma3=vllm",
        INTERLINGUA_ENCODERS="llama=vllm",
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    yield from special_server(env, tmp_path_factory, "vllm")


def request(mode: str, **extra: object) -> dict[str, object]:
    return {
        "source": "llama",
        "target": "gemma3",
        "text": TEXT,
        "prompt": PROMPT,
        "mode": mode,
        "max_new_tokens": 8,
        "method": "affine",
        **extra,
    }


@pytest.mark.parametrize("mode", ["native", "embeds"])
def test_vllm_target_answers_like_the_transformers_backend(vllm_server: Server, server: Server, mode: str) -> None:
    with vllm_server.client() as v, server.client() as t:
        got, want = v.post("/generate", json=request(mode)), t.post("/generate", json=request(mode))
    assert got.status_code == 200, got.text
    assert want.status_code == 200, want.text
    g, w = got.json(), want.json()
    assert (g["text"], g["finish_reason"], g["usage"]) == (w["text"], w["finish_reason"], w["usage"])


def test_models_name_the_engines(vllm_server: Server) -> None:
    with vllm_server.client() as c:
        models = {m["alias"]: m for m in c.get("/v1/models").json()["models"]}
    assert (models["llama"]["encoder"], models["llama"]["backend"]) == ("vllm", "transformers")
    assert (models["gemma3"]["encoder"], models["gemma3"]["backend"]) == ("transformers", "vllm")


def test_translate_from_vllm_states_equals_transformers(vllm_server: Server, server: Server) -> None:
    body = {"source": "llama", "target": "gemma3", "text": TEXT, "method": "affine", "return_states": "list"}
    with vllm_server.client() as v, server.client() as t:
        got, want = v.post("/translate", json=body), t.post("/translate", json=body)
    assert got.status_code == 200, got.text
    g, w = got.json(), want.json()
    assert (g["tokens"], g["shape"], g["source_layer"]) == (w["tokens"], w["shape"], w["source_layer"])
    got_states, want_states = torch.tensor(g["states"]["data"]), torch.tensor(w["states"]["data"])
    torch.testing.assert_close(got_states, want_states, rtol=1e-3, atol=1e-3)


def test_vllm_target_streams(vllm_server: Server) -> None:
    with vllm_server.client() as c, c.stream("POST", "/generate", json=request("embeds", stream=True)) as r:
        assert r.status_code == 200
        body = r.read().decode()
    assert body.count("data: ") >= 2 and "event: done" in body


@pytest.mark.parametrize("mode", ["replace", "full", "last_token"])
def test_middle_layer_modes_are_422_naming_the_backend(vllm_server: Server, mode: str) -> None:
    with vllm_server.client() as c:
        r = c.post("/generate", json=request(mode, layer=1))
    assert r.status_code == 422, r.text
    assert "vllm backend serving gemma3 cannot run mode" in r.text and "transformers backend serves it" in r.text


def test_other_direction_stays_on_transformers(vllm_server: Server) -> None:
    body = {**request("replace", layer=1), "source": "gemma3", "target": "llama"}
    with vllm_server.client() as c:
        r = c.post("/generate", json=body)
    assert r.status_code == 200, r.text
