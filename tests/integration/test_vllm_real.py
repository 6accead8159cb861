"""The real pair with vLLM at both ends (smollm2's states from the vLLM encoder, gemma3 decoded by vLLM) answers
`native` and `embeds` like ``make serve``, and the other direction stays on transformers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import EXTERNAL, Server, special_server
from tests.vllm.conftest import require_vllm

pytestmark = [pytest.mark.real, pytest.mark.slow]

CONTEXT = "Ysolde Marrow built a lighthouse in Quillmere in 1874. It was later run by Corin Aske."
QUESTION = "\nQuestion: Who ran the lighthouse later?\nAnswer:"


@pytest.fixture(scope="module")
def vllm_real(default_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not EXTERNAL:
        require_vllm()
    assert default_server.log is not None
    env = {
        "INTERLINGUA_MAPS": str(default_server.log.parent / "maps"),  # the bundled maps, installed by make serve
        "INTERLINGUA_BACKENDS": "gemma3=vllm",
        "INTERLINGUA_ENCODERS": "smollm2=vllm",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    yield from special_server(env, tmp_path_factory, "vllm-real")


@pytest.mark.parametrize(
    "source,target,mode",
    [("smollm2", "gemma3", "native"), ("smollm2", "gemma3", "embeds"), ("gemma3", "smollm2", "replace")],
)
def test_vllm_engines_answer_like_make_serve(
    vllm_real: Server, default_server: Server, source: str, target: str, mode: str
) -> None:
    body = {"source": source, "target": target, "text": CONTEXT, "prompt": QUESTION, "mode": mode, "max_new_tokens": 8}
    with vllm_real.client() as v, default_server.client() as t:
        got, want = v.post("/generate", json=body), t.post("/generate", json=body)
    assert got.status_code == want.status_code == 200, (got.text, want.text)
    keys = ("text", "finish_reason", "usage", "source_layer", "source_layers", "target_layer", "method")
    assert {k: got.json()[k] for k in keys} == {k: want.json()[k] for k in keys}
