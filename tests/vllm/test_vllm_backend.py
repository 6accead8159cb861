"""The vLLM backend against the transformers backend on tiny models: same greedy tokens for `native` and `embeds`
(prompt embeddings mixed with token ids), the same stop handling, and an oracle: `embeds` fed with B's own layer-0
states of a text is native generation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service.backends import TransformersBackend
from service.runtime.encode import encode
from service.runtime.generate import Completion, SamplingParams
from service.runtime.loading import LoadedModel, load_model
from service.runtime.modes import NATIVE, get_mode
from service.runtime.prompt import Prompt
from tests.vllm.conftest import require_vllm

pytestmark = pytest.mark.slow

TEXTS = [
    "the old mill on the river was built in 1821 by Varn",
    "Oskel founded the market",
    "the stone bridge to the north harbor was named after Tamsin Brede in 1903",
]
QUESTION = " question: who built the mill? answer:"


def run(backend: object, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
    out: dict[int, Completion] = {}
    for event in backend.stream(prompts, [params] * len(prompts)):  # type: ignore[attr-defined]
        if event.completion is not None:
            out[event.index] = event.completion
    return [out[i] for i in range(len(prompts))]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def backends(
    request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]
) -> Iterator[tuple[LoadedModel, object, object]]:
    require_vllm()
    from service.backends.vllm_engine import VLLMBackend

    target = load_model(str(tiny_dirs[request.param]), name=request.param)
    vllm_backend = VLLMBackend(target, dtype="float32")
    yield target, TransformersBackend(target), vllm_backend
    vllm_backend.close()


def native(target: LoadedModel, text: str, suffix: str = QUESTION) -> Prompt:
    return Prompt(NATIVE, target.tokenize(suffix)[0], prefix_ids=target.tokenize(text)[0])


def own_states(target: LoadedModel, text: str) -> torch.Tensor:
    """B's layer-0 states (its input embeddings, scale included) for its own tokens of ``text``."""
    return encode(target, [text], [0])[0].states[0]


def test_native_greedy_tokens_agree(backends) -> None:  # type: ignore[no-untyped-def]
    target, hf, vl = backends
    prompts = [native(target, t) for t in TEXTS]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    want, got = run(hf, prompts, params), run(vl, prompts, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert all(len(c.token_ids) == 12 and c.finish_reason == "length" for c in got)
    assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in want]
    assert [c.text for c in got] == [target.decode(c.token_ids) for c in want]
    # Without ignore_eos both stop at the same end token (the tiny Gemma 3 emits one within 12 tokens).
    params = SamplingParams(max_new_tokens=12)
    want, got = run(hf, prompts, params), run(vl, prompts, params)
    assert [(c.token_ids, c.finish_reason) for c in got] == [(c.token_ids, c.finish_reason) for c in want]


def test_embeds_greedy_tokens_agree(backends) -> None:  # type: ignore[no-untyped-def]
    target, hf, vl = backends
    gen = torch.Generator().manual_seed(0)
    prompts = []
    for text in TEXTS:
        states = own_states(target, text)
        # Off-distribution inputs, like mapped states: the model's own embeddings plus noise of a similar size.
        noisy = states + torch.randn(states.shape, generator=gen) * states.std()
        prompts.append(Prompt(get_mode("embeds"), target.tokenize(QUESTION)[0], states=noisy))
    prompts.append(Prompt(get_mode("embeds"), [], states=own_states(target, TEXTS[0])))  # no suffix
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    want, got = run(hf, prompts, params), run(vl, prompts, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]


def test_embeds_of_own_states_is_native_generation(backends) -> None:  # type: ignore[no-untyped-def]
    target, _, vl = backends
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    natives = run(vl, [native(target, t) for t in TEXTS], params)
    embeds = run(
        vl,
        [Prompt(get_mode("embeds"), target.tokenize(QUESTION)[0], states=own_states(target, t)) for t in TEXTS],
        params,
    )
    assert [c.token_ids for c in embeds] == [c.token_ids for c in natives]


def test_stop_strings_end_both_backends_alike(backends) -> None:  # type: ignore[no-untyped-def]
    target, hf, vl = backends
    prompt = native(target, TEXTS[0])
    free = run(hf, [prompt], SamplingParams(max_new_tokens=12, ignore_eos=True))[0]
    words = free.text.split()
    stop = words[len(words) // 2] if len(words) > 1 else free.text[len(free.text) // 2 :]
    params = SamplingParams(max_new_tokens=12, stop=[stop], ignore_eos=True)
    want, got = run(hf, [prompt], params)[0], run(vl, [prompt], params)[0]
    assert want.finish_reason == "stop" and stop not in want.text
    assert (got.text, got.finish_reason) == (want.text, want.finish_reason)


def test_streamed_deltas_add_up_to_the_text(backends) -> None:  # type: ignore[no-untyped-def]
    target, _, vl = backends
    prompts = [native(target, t) for t in TEXTS[:2]]
    pieces = ["", ""]
    finals: dict[int, Completion] = {}
    for event in vl.stream(prompts, [SamplingParams(max_new_tokens=8, ignore_eos=True)] * 2):
        pieces[event.index] += event.delta
        if event.completion is not None:
            finals[event.index] = event.completion
    assert pieces == [finals[0].text, finals[1].text]


def test_modes_beyond_layer_zero_are_not_offered(backends) -> None:  # type: ignore[no-untyped-def]
    _, _, vl = backends
    assert (
        vl.supports(get_mode("native"), 0)
        and vl.supports(get_mode("embeds"), 0)
        and vl.supports(get_mode("replace"), 0)
    )
    assert (
        not vl.supports(get_mode("replace"), 2)
        and not vl.supports(get_mode("full"), 2)
        and not vl.supports(get_mode("last_token"), 1)
    )
    with pytest.raises(ValueError, match="cannot run mode 'replace' at layer 2"):
        vl.engine_prompt(Prompt(get_mode("replace"), [1], layer=2, states=torch.zeros(3, 128)))


def test_equal_token_ids_with_different_states_never_share_the_prefix_cache(backends) -> None:  # type: ignore[no-untyped-def]
    """Two mixed prompts whose token ids are equal (the placeholders included) but whose handed-over states differ:
    batched together each must answer as it does alone, and differently from the other."""
    target, _, vllm_backend = backends
    base = own_states(target, TEXTS[2])
    other = base.flip(0) * 1.5  # same length, so the same placeholder ids; different states
    suffix = target.tokenize(QUESTION)[0]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    prompts = [Prompt(get_mode("embeds"), suffix, states=s) for s in (base, other)]
    alone = [run(vllm_backend, [p], params)[0].token_ids for p in prompts]
    again = [run(vllm_backend, [p], params)[0].token_ids for p in reversed(prompts)][::-1]  # the cache is warm now
    together = [c.token_ids for c in run(vllm_backend, prompts, params)]
    assert alone[0] != alone[1]
    assert again == alone and together == alone
