"""The HTTP API as a Ray Serve application, so that the models scale apart and past one machine.

Deployments (names are what a Serve config file's ``deployments:`` section sets replicas, autoscaling and resources
by):
- ``ingress``: the same FastAPI app as the single-process server (routes, validation, errors, metrics, batching),
  holding no model weights: it resolves maps and hands work to the model deployments.
- ``source-<alias>`` per model: encode a text (transformers or the vLLM encoder) and map its states into the target.
- ``target-<alias>`` per model: build the target prompt from the mapped states and decode it (transformers or vLLM);
  /translate's diagnostics.
Mapped states travel from a source replica to a target replica through Ray's object store (the source's response is
passed to the target call as it is), never as JSON or base64. Maps are read by every source replica from the map
store, so on a cluster the store is a path every node sees (or baked into the image).

A replica that dies mid-request costs no accepted request a hang: /translate's calls are retried on another replica;
a /generate whose source or target replica is lost before its first token is sent again once, projected again;
later, the request ends with 503 and Retry-After.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from aligners import Aligner
from aligners.store import MapKey, MapStore, load_checked
from service.api.app import create_app
from service.api.errors import NotReadyError
from service.api.planner import RequestPlanner, check_room
from service.api.schemas import GenerateRequest, TranslateRequest, TranslateResponse
from service.api.state import ServiceState
from service.api.translation import SourceSide, TargetSide, response, source_side, target_side
from service.backends import make_backend
from service.runtime.generate import SamplingParams, StepEvent
from service.runtime.handover import Grid, LayerMap, Projected, build_prompt, needed_layers, project
from service.runtime.loading import load_model
from service.runtime.modes import HandoverMode
from service.runtime.prompt import LastTokenOp
from service.settings import Settings

log = logging.getLogger("interlingua")
# What a lost replica looks like to a caller: the call may go to another replica.
REPLICA_LOST = (RayActorError, DeploymentUnavailableError, BackPressureError)
RETRIES = 2
MAP_CACHE = 64


@dataclass
class ModelCard:
    """What the ingress knows of a model it does not load: enough to resolve maps and list models."""

    name: str
    architecture: str
    n_layers: int
    hidden_size: int
    fingerprint: str
    device: str
    backend: str
    encoder: str


@dataclass
class PendingHandover:
    """A generate request on its way to the target deployment: the source's pending answer and the target side."""

    request_id: str
    text: str
    suffix: str
    mode: str  # the handover mode's name
    op: LastTokenOp
    grid: Grid
    max_new_tokens: int
    project: Callable[[], Any] | None = None  # starts the source call: a DeploymentResponse resolving to a Projected
    projected: Any = None  # its pending answer (None for native)


class _Replica:
    """A model loaded in a replica, as the single-process server loads it."""

    role = ""

    def __init__(self, alias: str, spec: str, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.settings = Settings(**settings)
        device = self.settings.device_map.get(alias, "cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(spec, name=alias, dtype=self.settings.dtype, device=device)
        self.alias = alias

    def record(self, kind: str, request_ids: list[str]) -> None:
        """Append one line per unit of work to $INTERLINGUA_WORK_LOG (a file all replicas share), when it is set."""
        path = os.environ.get("INTERLINGUA_WORK_LOG")
        if not path:
            return
        replica = serve.get_replica_context().replica_id.unique_id
        with open(path, "a") as f:
            for rid in request_ids:
                f.write(
                    json.dumps(
                        {"deployment": f"{self.role}-{self.alias}", "replica": replica, "kind": kind, "request": rid}
                    )
                    + "\n"
                )

    def card(self, backend: str = "transformers", encoder: str = "transformers") -> ModelCard:
        m = self.model
        return ModelCard(m.name, m.architecture, m.n_layers, m.hidden_size, m.fingerprint, m.device, backend, encoder)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class SourceModel(_Replica):
    """Encode + map for one source model."""

    role = "source"

    def __init__(self, alias: str, spec: str, settings: dict[str, Any]) -> None:
        super().__init__(alias, spec, settings)
        self.maps: OrderedDict[tuple[str, str], Aligner] = OrderedDict()
        self.vllm = None
        # The layers any map fitted for this model reads (in the store, or bundled to be installed there).
        layers = sorted(
            {
                layer
                for root in (self.settings.maps, self.settings.default_maps)
                for e in MapStore(root).manifest()["maps"]
                if e.get("source_fingerprint") == self.model.fingerprint
                for layer in MapKey.from_entry(e).source_layers
            }
        )
        if self.settings.encoder_for(alias) == "vllm" and layers:
            from service.backends.vllm_source import VLLMEncoder

            self.vllm = VLLMEncoder(self.model, layers, **self.settings.vllm_options)

    def info(self) -> ModelCard:
        return self.card(encoder="vllm" if self.vllm is not None else "transformers")

    def _maps(self, maps: list[tuple[list[int], int, str]], target_fingerprint: str) -> list[LayerMap]:
        out = []
        for source_layers, target_layer, path in maps:
            key = (path, target_fingerprint)
            if key not in self.maps:
                self.maps[key] = load_checked(Path(path), self.model.fingerprint, target_fingerprint)[0]
                while len(self.maps) > MAP_CACHE:
                    self.maps.popitem(last=False)
            out.append(LayerMap.of(source_layers, target_layer, self.maps[key]))
        return out

    def _encoder(self, maps: list[LayerMap]) -> Any:
        layers = needed_layers(maps)
        return self.vllm.encode if self.vllm is not None and self.vllm.covers(layers) else None

    def project(self, request_id: str, text: str, maps: list[tuple[list[int], int, str]], target_fp: str) -> Projected:
        self.record("project", [request_id])
        layer_maps = self._maps(maps, target_fp)
        return project(self.model, text, layer_maps, self._encoder(layer_maps))

    def translate(
        self, request_id: str, text: str, maps: list[tuple[list[int], int, str]], target_fp: str
    ) -> SourceSide:
        self.record("translate", [request_id])
        layer_maps = self._maps(maps, target_fp)
        return source_side(self.model, self._encoder(layer_maps), text, layer_maps[0])


@serve.deployment(ray_actor_options={"num_cpus": 1})
class TargetModel(_Replica):
    """Build the prompt and decode for one target model."""

    role = "target"

    def __init__(self, alias: str, spec: str, settings: dict[str, Any]) -> None:
        super().__init__(alias, spec, settings)
        self.backend = make_backend(self.settings.backend_for(alias), self.model, self.settings)

    def info(self) -> ModelCard:
        return self.card(backend=self.backend.name)

    def generate(
        self, items: list[PendingHandover], params: list[SamplingParams], *projected: Projected | None
    ) -> Iterator[StepEvent]:
        """Decode a batch; one event per request per step, as ``Backend.stream`` gives them. A request whose prompt
        cannot be built ends with an event carrying its error; the others go on."""
        self.record("generate", [h.request_id for h in items])
        prompts, keep = [], []
        for i, (h, p) in enumerate(zip(items, projected, strict=True)):
            try:
                prompt = build_prompt(self.model, h.text, h.suffix, h.mode, p, h.op, h.grid)
                check_room(self.model, prompt, h.max_new_tokens)
            except ValueError as err:
                yield StepEvent(i, -1, "", True, None, err)
                continue
            prompts.append(prompt)
            keep.append(i)
        if prompts:
            for event in self.backend.stream(prompts, [params[i] for i in keep]):
                event.index = keep[event.index]
                given = projected[event.index]
                if event.completion is not None and given is not None:
                    event.completion.source_tokens = len(given.ids)
                    event.completion.timings_ms = given.timings_ms
                yield event

    def diagnostics(self, req: TranslateRequest, layer: int, src: SourceSide) -> TargetSide:
        return target_side(self.model, req, layer, src)


def _call(what: str, fn: Callable[[], Any]) -> Any:
    """Run a deployment call, again on another replica when one is lost; 503 when none answers."""
    for attempt in range(RETRIES + 1):
        try:
            return fn()
        except REPLICA_LOST as err:
            log.warning(
                "%s: a replica was lost (%s); %s",
                what,
                type(err).__name__,
                "retrying" if attempt < RETRIES else "giving up",
            )
            time.sleep(0.5 * (attempt + 1))
    raise NotReadyError(f"{what}: the model's replicas are unavailable; retry shortly")


class RayBackend:
    """The ``Backend`` the ingress decodes with: a target deployment's ``generate`` stream."""

    def __init__(self, handle: DeploymentHandle, card: ModelCard) -> None:
        self.handle, self.card = handle, card
        self.name = card.backend  # what decodes in the target deployment

    def supports(self, mode: HandoverMode, layer: int) -> bool:
        return self.card.backend == "transformers" or mode.on_input_embeddings(layer)

    def stream(
        self, prompts: list[Any], params: list[SamplingParams], stop: Callable[[int], bool] | None = None
    ) -> Iterator[StepEvent]:
        done: set[int] = set()
        for attempt in range(2):
            started = False
            if attempt:  # a lost replica may have been a source replica: project again
                for h in prompts:
                    h.projected = h.project() if h.project is not None else None
            # The pending states go as arguments of their own (Serve resolves those, not ones nested in a list).
            items = [dataclasses.replace(h, project=None, projected=None) for h in prompts]
            states = [h.projected for h in prompts]
            gen: Any = self.handle.options(stream=True).generate.remote(items, params, *states)
            try:
                for event in gen:
                    started = True
                    if event.index in done:
                        continue  # stopped here; the replica decodes it to the end of this batch
                    if event.finished:
                        done.add(event.index)
                    yield event
                    if stop is not None:
                        for i in range(len(prompts)):
                            if i not in done and stop(i):
                                done.add(i)
                                yield StepEvent(i, -1, "", True, None)
                    if len(done) == len(prompts):
                        gen.cancel()
                        return
                return
            except REPLICA_LOST as err:
                if started or attempt:
                    lost = NotReadyError("the target model's replica was lost mid-request; retry shortly")
                    for i in range(len(prompts)):
                        if i not in done:
                            yield StepEvent(i, -1, "", True, None, lost)
                    return
                log.warning("decode: a replica was lost before the first token (%s); retrying", type(err).__name__)
            except RayError as err:  # an error raised inside the replica: every request of the batch gets it
                cause = err.cause if hasattr(err, "cause") and isinstance(err.cause, Exception) else err
                for i in range(len(prompts)):
                    if i not in done:
                        yield StepEvent(i, -1, "", True, None, cause)
                return

    def close(self) -> None:
        """The deployment owns the model."""


class RayState(ServiceState):
    """The ingress's state: model cards from the deployments (``models`` holds them, ``cards`` their engines), maps
    resolved here; ``RayPlanner`` hands the work of requests to the deployments."""

    def __init__(
        self, settings: Settings, sources: dict[str, DeploymentHandle], targets: dict[str, DeploymentHandle]
    ) -> None:
        super().__init__(settings)
        self.sources, self.targets = sources, targets
        self.cards: dict[str, ModelCard] = {}

    def load(self) -> None:
        try:
            for alias, handle in self.targets.items():
                self.detail = f"waiting for the target deployment of {alias}"
                card: ModelCard = handle.info.remote().result()
                self.cards[alias] = self.models[alias] = card
                self.backends[alias] = RayBackend(handle, card)
            for alias, handle in self.sources.items():
                self.detail = f"waiting for the source deployment of {alias}"
                self.cards[alias].encoder = handle.info.remote().result().encoder
            fingerprints = {alias: m.fingerprint for alias, m in self.models.items()}
            if self.settings.prepare_maps and len(self.models) >= 2 and not self.store.for_models(fingerprints):
                self._install_bundled(fingerprints)
            self.refresh_maps()
            self.status, self.detail = "ready", "deployments and maps ready"
        except Exception as err:
            self.status, self.detail = "failed", f"{type(err).__name__}: {err}"
            log.exception("loading failed")

    def engine_names(self, alias: str) -> tuple[str, str]:
        card = self.cards[alias]
        return card.backend, card.encoder

    def close(self) -> None:
        """The deployments own the models."""


class RayPlanner(RequestPlanner):
    """Plans requests as the single-process server does; the source and target deployments do the work."""

    def __init__(self, state: RayState) -> None:
        super().__init__(state)
        self.ray = state

    def _source(self, alias: str) -> DeploymentHandle:
        if alias not in self.ray.sources:
            raise NotReadyError(f"no source deployment serves {alias}")
        return self.ray.sources[alias]

    def handover(self, req: GenerateRequest, resolved: Any) -> Callable[[], tuple[Any, dict[str, float], int]]:
        rid = uuid.uuid4().hex
        maps = [
            (list(m.source_layers), m.target_layer, str(p)) for m, p in zip(resolved.maps, resolved.paths, strict=True)
        ]
        target_fp = self.ray.models[req.target].fingerprint

        def project() -> Any:
            # Started now, awaited by the target replica: the states go from replica to replica.
            return self._source(req.source).project.remote(rid, req.text, maps, target_fp)

        def build() -> tuple[PendingHandover, dict[str, float], int]:
            mode = resolved.mode.name  # a name travels to the target replica
            h = PendingHandover(rid, req.text, req.prompt, mode, req.op, req.grid, req.max_new_tokens)
            if maps:
                h.project = project
                h.projected = project()
            return h, {}, 0

        return build

    def translate(self, req: TranslateRequest, resolved: Any) -> TranslateResponse:
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex
        m, path = resolved.maps[0], resolved.paths[0]
        target_fp = self.ray.models[req.target].fingerprint
        src: SourceSide = _call(
            "translate",
            lambda: (
                self._source(req.source)
                .translate.remote(rid, req.text, [(list(m.source_layers), m.target_layer, str(path))], target_fp)
                .result()
            ),
        )
        tgt = TargetSide(src.mapped)
        if req.top_k or req.compare_native or src.snap:  # the snap needs the target's embedding table
            tgt = _call(
                "diagnostics",
                lambda: self.ray.targets[req.target].diagnostics.remote(req, m.target_layer, src).result(),
            )
        result = response(req, resolved.maps, resolved.method, src, tgt)
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """The HTTP API; ``workers`` threads wait on the model deployments, so that many batches are in flight."""

    def __init__(
        self,
        settings: dict[str, Any],
        sources: dict[str, DeploymentHandle],
        targets: dict[str, DeploymentHandle],
        workers: int,
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.state = RayState(Settings(**settings), sources, targets)
        self.workers = workers

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.state.settings, self.state, workers=self.workers, planner=RayPlanner(self.state))


class AppArgs(BaseModel):
    """The application's arguments (a Serve config file's ``args:``)."""

    settings: dict[str, Any] = Field(
        default_factory=dict, description="service settings by name, as INTERLINGUA_* variables would set them"
    )
    workers: int = Field(16, ge=1, description="ingress threads waiting on the model deployments")
    deployments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per deployment name (ingress, source-<alias>, target-<alias>): Serve deployment options such as "
        "num_replicas, autoscaling_config or ray_actor_options (a config file's deployments: section does the same)",
    )


def build(args: dict[str, Any] | AppArgs | None = None) -> serve.Application:
    """The Serve application: ``serve run service.scale.ray_app:build`` or a config file's ``import_path``."""
    app_args = args if isinstance(args, AppArgs) else AppArgs(**(args or {}))
    settings = Settings(**app_args.settings)
    plain = settings.model_dump(mode="json", exclude_unset=False)
    specs = settings.model_specs
    unknown = set(app_args.deployments) - {"ingress", *(f"{r}-{a}" for a in specs for r in ("source", "target"))}
    if unknown:
        raise ValueError(f"deployments: no deployment named {sorted(unknown)}; models are {sorted(specs)}")

    def options(name: str) -> dict[str, Any]:
        return {"name": name, **app_args.deployments.get(name, {})}

    # serve.deployment makes each class a Deployment (with .options and .bind); mypy sees the class.
    source_d, target_d, ingress_d = cast(Any, SourceModel), cast(Any, TargetModel), cast(Any, Ingress)
    sources = {a: source_d.options(**options(f"source-{a}")).bind(a, s, plain) for a, s in specs.items()}
    targets = {a: target_d.options(**options(f"target-{a}")).bind(a, s, plain) for a, s in specs.items()}
    return cast(
        serve.Application, ingress_d.options(**options("ingress")).bind(plain, sources, targets, app_args.workers)
    )
