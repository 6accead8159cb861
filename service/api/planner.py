"""The work of one request, planned against what the service has loaded (``ServiceState``): its mode when it names
none, the maps it is served with, the backend that decodes it, and the jobs that run on the model worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligners.resolve import TRANSLATE, choose
from aligners.store import MapNotFoundError
from service.api.errors import InvalidRequestError, NotFoundError
from service.api.schemas import GenerateRequest, TranslateRequest, TranslateResponse
from service.api.state import ServiceState
from service.api.translation import response, source_side, target_side
from service.backends import Backend
from service.runtime.encode import encode
from service.runtime.handover import Encoder, LayerMap, needed_layers, prepare
from service.runtime.loading import LoadedModel
from service.runtime.modes import HandoverMode, default_mode
from service.runtime.prompt import Prompt


def check_room(target: LoadedModel, prompt: Prompt, max_new_tokens: int) -> None:
    """Refuse a prompt that, with the tokens asked for, runs past the target's positions."""
    positions = 1 + prompt.prefix_len + len(prompt.suffix_ids) + max_new_tokens
    target.check_positions(positions, f"this request (prompt and max_new_tokens {max_new_tokens})")


@dataclass
class Resolved:
    """The mode and maps one request uses (``mode`` None: ``/translate``, maps into any layer), and the layer pair
    and method it reports."""

    mode: HandoverMode | None
    maps: list[LayerMap]
    source_layer: int | None
    target_layer: int | None
    method: str | None
    paths: list[Path] = field(default_factory=list)  # the maps' files, in the order of ``maps``
    source_layers: list[int] | None = None  # where the main map concatenates several source layers

    @property
    def handover_mode(self) -> HandoverMode:
        """The mode of a generate request's handover (only ``/translate`` resolves maps without one)."""
        assert self.mode is not None
        return self.mode


class RequestPlanner:
    """Plans requests against ``state``; the Ray ingress plans the same way and hands the work to deployments."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def encoder(self, alias: str, layers: list[int]) -> Encoder:
        """What computes ``alias``'s states at ``layers``: its vLLM encoder where it serves them, else transformers."""
        engine = self.state.encoders.get(alias)
        if engine is not None and engine.covers(layers):
            return engine.encode
        model = self.state.loaded(alias)
        return lambda texts, at: encode(model, texts, at)

    def backend(self, target: str, mode: HandoverMode, layer: int) -> Backend:
        backend = self.state.backends[target]
        if not backend.supports(mode, layer):
            raise InvalidRequestError(
                f"the {backend.name} backend serving {target} cannot run mode {mode.name!r} at layer "
                f"{layer}; the transformers backend serves it"
            )
        return backend

    # --- work (run on the model worker) ------------------------------------------------------------------------------
    def handover(self, req: GenerateRequest, resolved: Resolved) -> Callable[[], tuple[Any, dict[str, float], int]]:
        """The job that turns a generate request into its target prompt (``Backend.stream`` takes it), with the
        prepare timings and the count of source tokens."""
        src, tgt = self.state.loaded(req.source), self.state.loaded(req.target)
        encoder = self.encoder(req.source, needed_layers(resolved.maps))

        mode = resolved.handover_mode

        def build() -> tuple[Prompt, dict[str, float], int]:
            handover = prepare(src, tgt, req.text, req.prompt, mode, resolved.maps, req.op, encoder, req.grid)
            check_room(tgt, handover.prompt, req.max_new_tokens)
            return handover.prompt, handover.timings_ms, len(handover.source_ids) if mode.uses_maps else 0

        return build

    def translate(self, req: TranslateRequest, resolved: Resolved) -> TranslateResponse:
        t0 = time.perf_counter()
        layer_map = resolved.maps[0]
        encoder = self.encoder(req.source, list(layer_map.source_layers))
        src = source_side(self.state.loaded(req.source), encoder, req.text, layer_map)
        tgt = target_side(self.state.loaded(req.target), req, layer_map.target_layer, src)
        result = response(req, resolved.maps, resolved.method, src, tgt)
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result

    def default_mode(self, source: str, target: str, layer: int | None) -> HandoverMode:
        """The mode of a request that names none (``modes.default_mode``) where the handover enters the target: the
        request's ``layer``, else the pair's default map's target layer."""
        if layer is None:
            layer = self.state.defaults.get(f"{source}__{target}", {}).get("target_layer")
        return default_mode(layer)

    def resolve(
        self, source: str, target: str, mode: HandoverMode | None, layer: int | None, method: str | None
    ) -> Resolved:
        """The maps a handover in ``mode`` needs (none for ``native``; None: ``/translate``, a map into any layer),
        chosen by ``aligners.resolve.choose``."""
        self.state.model(source)  # an unknown source is a 404 before anything else
        tgt = self.state.model(target)
        if mode is not None and not mode.uses_maps:
            return Resolved(mode, [], None, None, None)
        if layer is not None and layer >= tgt.n_layers:
            raise InvalidRequestError(f"layer must be in [0, {tgt.n_layers - 1}] for {target}, got {layer}")
        if not any(e["source"] == source and e["target"] == target for e in self.state.served):
            raise NotFoundError(
                f"no maps served for {source} -> {target}; pairs with maps: "
                f"{sorted({e['source'] + ' -> ' + e['target'] for e in self.state.served})}"
            )
        try:
            need = TRANSLATE if mode is None else mode.need
            default = self.state.defaults.get(f"{source}__{target}")
            key, below = choose(self.state.served, source, target, need, layer, method, default=default)
        except ValueError as err:
            raise InvalidRequestError(str(err)) from None
        except MapNotFoundError as err:
            raise NotFoundError(str(err)) from None
        keys = [key, *below]
        maps = [LayerMap(k.source_layer, k.target_layer, self.state.aligner(k), k.extra_layers) for k in keys]
        paths = [self.state.path(k) for k in keys]
        return Resolved(mode, maps, key.source_layer, key.target_layer, key.method, paths, maps[0].concatenated)
