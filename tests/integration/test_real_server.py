"""The server on the real pair (smollm2 -> gemma3) with maps from a small calibration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from calibrate.cli import main as calibrate
from service.runtime.loading import LoadedModel
from tests.integration.conftest import EXTERNAL, Server, start_server, stop_server

pytestmark = [pytest.mark.real, pytest.mark.slow]

CONTEXT = "Ysolde Marrow built a lighthouse in Quillmere in 1874. It was later run by Corin Aske."
QUESTION = "\nQuestion: In which year was the lighthouse built?\nAnswer:"


@pytest.fixture(scope="module")
def real_server(real_pair: dict[str, LoadedModel], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if EXTERNAL:
        pytest.skip("starts its own server")
    root = tmp_path_factory.mktemp("real")
    args = [
        "fit",
        "--source",
        "smollm2",
        "--target",
        "gemma3",
        "--samples",
        "64",
        "--eval-samples",
        "4",
        "--layers",
        "8",
        "--target-layers",
        "4",
        "--methods",
        "affine",
        "--sampled",
        "0",
        "--directions",
        "forward",
        "--out",
        str(root / "maps"),
        "--cache",
        str(root / "cache"),
    ]
    assert calibrate(args) == 0
    env = {"INTERLINGUA_MAPS": str(root / "maps"), "INTERLINGUA_PREPARE_MAPS": "false"}  # default models
    server = start_server(env, root / "server.log")
    yield server
    stop_server(server)


def test_real_pair_generate_and_translate(real_server: Server) -> None:
    req = {
        "source": "smollm2",
        "target": "gemma3",
        "text": CONTEXT,
        "prompt": QUESTION,
        "max_new_tokens": 6,
        "stop": ["\n"],
    }
    with real_server.client() as c:
        models = c.get("/v1/models").json()
        native = c.post("/generate", json={**req, "mode": "native"}).json()
        replaced = c.post("/generate", json={**req, "mode": "replace"})
        translated = c.post(
            "/translate",
            json={"source": "smollm2", "target": "gemma3", "text": CONTEXT, "top_k": 1, "compare_native": True},
        ).json()
    assert {m["alias"] for m in models["models"]} == {"smollm2", "gemma3"}
    assert "1874" in native["text"]
    assert replaced.status_code == 200 and replaced.json()["target_layer"] == 4
    assert translated["shape"][1] == 640 and translated["source_layer"] == 8
    # A fitted least-squares map lands closer to gemma3's own states than chance would.
    assert translated["native_cosine"]["mean"] > 0.5


@pytest.mark.parametrize("source,target", [("smollm2", "gemma3"), ("gemma3", "smollm2")])
@pytest.mark.parametrize("mode", ["native", "replace", "full", "embeds", "last_token"])
def test_a_fresh_server_answers_every_mode_in_both_directions(
    default_server: Server, source: str, target: str, mode: str
) -> None:
    req = {"source": source, "target": target, "text": CONTEXT, "prompt": QUESTION, "mode": mode}
    with default_server.client() as c:
        r = c.post("/generate", json={**req, "max_new_tokens": 4, "stop": ["\n"]})
        ready = c.get("/ready").json()
    assert r.status_code == 200, r.text
    assert ready["maps_served"] > 0 and ready["refused_maps"] == []
    if mode == "embeds":
        assert r.json()["target_layer"] == 0
