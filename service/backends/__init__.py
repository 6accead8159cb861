"""Generation backends for the target model, behind one interface and chosen by name from a registry.

A backend decodes a batch of prepared prompts for one target model. The transformers backend runs every mode; a
backend that cannot run a mode says so through ``supports`` and the service answers 422 naming the backend that can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from service.runtime.generate import Prompt, SamplingParams, StepEvent, stream_batch
from service.runtime.loading import LoadedModel


class Backend(Protocol):
    name: str

    def supports(self, mode: str, layer: int) -> bool:
        """Whether this backend can run a handover mode at a target layer."""
        ...

    def stream(self, prompts: list[Prompt], params: list[SamplingParams]) -> Iterator[StepEvent]:
        """Decode a batch (prompts share mode and layer), one event per request per step."""
        ...


class TransformersBackend:
    """Block-by-block decoding with transformers modules: every mode, every layer."""

    name = "transformers"

    def __init__(self, target: LoadedModel) -> None:
        self.target = target

    def supports(self, mode: str, layer: int) -> bool:
        return True

    def stream(self, prompts: list[Prompt], params: list[SamplingParams]) -> Iterator[StepEvent]:
        return stream_batch(self.target, prompts, params)


BACKENDS: dict[str, Callable[[LoadedModel], Backend]] = {"transformers": TransformersBackend}


def make_backend(name: str, target: LoadedModel) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not available in this build; available: {sorted(BACKENDS)}")
    return BACKENDS[name](target)
