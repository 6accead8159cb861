"""Generation backends for the target model, behind one interface and chosen by name from a registry.

A backend decodes a batch of prepared prompts for one target model. The transformers backend runs every mode; a
backend that cannot run a mode says so through ``supports`` and the service answers 422 naming the backend that can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from service.runtime.generate import SamplingParams, StepEvent, stream_batch
from service.runtime.loading import LoadedModel
from service.runtime.modes import HandoverMode
from service.runtime.prompt import Prompt

if TYPE_CHECKING:
    from service.settings import Settings


class Backend(Protocol):
    name: str

    def supports(self, mode: HandoverMode, layer: int) -> bool:
        """Whether this backend can run a handover mode at a target layer."""
        ...

    def stream(
        self, prompts: list[Prompt], params: list[SamplingParams], stop: Callable[[int], bool] | None = None
    ) -> Iterator[StepEvent]:
        """Decode a batch (prompts share mode and layer), one event per request per step. ``stop(i)`` is asked each
        step; a request it stops ends with one event ``finished=True, completion=None`` and takes no more work."""
        ...

    def close(self) -> None:
        """Release engines, worker processes and memory (the server calls it on shutdown)."""
        ...


class TransformersBackend:
    """Block-by-block decoding with transformers modules: every mode, every layer."""

    name = "transformers"

    def __init__(self, target: LoadedModel, settings: Settings | None = None) -> None:
        self.target = target

    def supports(self, mode: HandoverMode, layer: int) -> bool:
        return True

    def stream(
        self, prompts: list[Prompt], params: list[SamplingParams], stop: Callable[[int], bool] | None = None
    ) -> Iterator[StepEvent]:
        return stream_batch(self.target, prompts, params, stop)

    def close(self) -> None:
        """Nothing to release: the model belongs to the service state."""


def _vllm(target: LoadedModel, settings: Settings | None = None) -> Backend:
    from service.backends.vllm_engine import VLLMBackend
    from service.settings import Settings

    s = settings or Settings()
    return VLLMBackend(target, **s.vllm_options)


BACKENDS: dict[str, Callable[[LoadedModel, Settings | None], Backend]] = {
    "transformers": TransformersBackend,
    "vllm": _vllm,
}


def make_backend(name: str, target: LoadedModel, settings: Settings | None = None) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {sorted(BACKENDS)}")
    return BACKENDS[name](target, settings)
