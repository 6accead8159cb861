"""What the service has loaded: models, the maps it serves (fingerprints checked), and how loading went.

Loading runs in a background thread started by the app's lifespan, so ``/health`` answers at once and ``/ready``
reports progress. Maps whose fingerprints do not match the loaded models are refused (logged, listed in ``/ready``
and ``/v1/models``), never served.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aligners import Aligner, MapFileError
from aligners.store import MapKey, MapMismatchError, MapStore, load_checked
from service.api.errors import NotFoundError, NotReadyError
from service.backends import Backend, make_backend
from service.runtime.loading import LoadedModel, load_model
from service.settings import Settings

log = logging.getLogger("interlingua")
MAP_CACHE = 64  # maps kept in memory


class ModelView(Protocol):
    """What the service needs to know of a model to list it and resolve maps for it: a model loaded here
    (``LoadedModel``) or a model card of a deployment elsewhere (the Ray ingress's)."""

    @property
    def name(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def device(self) -> str: ...


@dataclass
class ServiceState:
    """The models and maps the service has loaded, and how loading went (the work of requests:
    ``service.api.planner``)."""

    settings: Settings
    models: dict[str, ModelView] = field(default_factory=dict)
    served: list[dict[str, Any]] = field(default_factory=list)  # manifest entries
    refused: list[dict[str, str]] = field(default_factory=list)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    backends: dict[str, Backend] = field(default_factory=dict)  # per target alias
    encoders: dict[str, Any] = field(default_factory=dict)  # per source alias: engines other than transformers
    status: str = "loading"
    detail: str = "starting"
    _maps: OrderedDict[MapKey, Aligner] = field(default_factory=OrderedDict)
    _paths: dict[MapKey, Path] = field(default_factory=dict)  # served key (aliases) -> its file
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self) -> MapStore:
        return MapStore(self.settings.maps)

    # --- loading ----------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load models, prepare maps if asked and none exist, check fingerprints. Never raises: failures land in
        ``status``/``detail`` for ``/ready``."""
        try:
            devices = self.settings.device_map
            for alias, spec in self.settings.model_specs.items():
                self.detail = f"loading model {alias} ({spec})"
                log.info(self.detail)
                model = load_model(spec, name=alias, dtype=self.settings.dtype, device=devices.get(alias, "cpu"))
                self.models[alias] = model
                self.backends[alias] = make_backend(self.settings.backend_for(alias), model, self.settings)
            fingerprints = {alias: m.fingerprint for alias, m in self.models.items()}
            if self.settings.prepare_maps and len(self.models) >= 2 and not self.store.for_models(fingerprints):
                self.detail = "installing the bundled default maps"
                self._install_bundled(fingerprints)
            self.refresh_maps()
            self._start_encoders()
            self.status, self.detail = "ready", "models and maps loaded"
            if len(self.models) >= 2 and not self.served:
                specs = list(self.settings.model_specs.values())
                self.detail = (
                    f"models loaded; no maps for them in {self.store.root} (only mode 'native' serves): fit some with "
                    f"`interlingua-calibrate fit --source {specs[0]} --target {specs[1]} --out {self.store.root}`"
                )
                log.warning(self.detail)
            log.info(
                "ready: %d models, %d maps served, %d refused", len(self.models), len(self.served), len(self.refused)
            )
        except Exception as err:  # reported through /ready; the process keeps serving /health
            self.status, self.detail = "failed", f"{type(err).__name__}: {err}"
            log.exception("loading failed")

    def _install_bundled(self, fingerprints: dict[str, str]) -> int:
        """Copy the maps shipped with the package that were fitted for the loaded models (matched by fingerprint,
        whatever their aliases) into the store. Returns how many."""
        bundled = MapStore(self.settings.default_maps)
        found = bundled.for_models(fingerprints)
        by_names: dict[tuple[tuple[str, str], ...], list[MapKey]] = {}
        for key, names in found:
            by_names.setdefault(tuple(sorted(names.items())), []).append(key)
        for naming, keys in by_names.items():  # one manifest rewrite per naming, not per map
            self.store.copy_from(bundled, keys, dict(naming))
        if found:
            log.info("installed %d bundled default maps into %s", len(found), self.store.root)
        return len(found)

    def _start_encoders(self) -> None:
        """A vLLM encoder for each source model configured for one, serving every source layer its maps read."""
        for alias in self.models:
            layers = sorted(
                {layer for e in self.served if e["source"] == alias for layer in MapKey.from_entry(e).source_layers}
            )
            if self.settings.encoder_for(alias) != "vllm" or not layers:
                continue
            from service.backends.vllm_source import VLLMEncoder

            self.detail = f"starting the vllm encoder of {alias} (layers {layers})"
            log.info(self.detail)
            self.encoders[alias] = VLLMEncoder(self.loaded(alias), layers, **self.settings.vllm_options)

    def engine_names(self, alias: str) -> tuple[str, str]:
        """What decodes ``alias`` as a target and what encodes it as a source."""
        backend = self.backends[alias].name if alias in self.backends else "transformers"
        return backend, self.encoders[alias].name if alias in self.encoders else "transformers"

    def refresh_maps(self) -> None:
        """Serve every map fitted for the loaded models, matched by fingerprint whatever the store calls them, after
        loading each file once: a corrupt file or one whose recorded fingerprints disagree is refused now, not on
        first use. Maps for models this server does not load are skipped, with a log line."""
        manifest = self.store.manifest()
        alias_of = {m.fingerprint: alias for alias, m in self.models.items()}
        served, refused, paths, skipped = [], [], {}, 0
        loaded: OrderedDict[MapKey, Aligner] = OrderedDict()
        renamed: dict[str, str] = {}  # the store's pair key -> this server's
        for e in manifest["maps"]:
            src, tgt = alias_of.get(e.get("source_fingerprint", "")), alias_of.get(e.get("target_fingerprint", ""))
            if src is None or tgt is None:
                if e["source"] in self.models and e["target"] in self.models:
                    have = f"{self.models[e['source']].fingerprint} -> {self.models[e['target']].fingerprint}"
                    reason = (
                        f"fitted for {e['source']} -> {e['target']} with fingerprints {e.get('source_fingerprint')} -> "
                        f"{e.get('target_fingerprint')}, but the loaded models have {have}: refit the map"
                    )
                    log.warning("refusing map %s: %s", e["path"], reason)
                    refused.append({"path": e["path"], "reason": reason})
                else:
                    skipped += 1
                continue
            key = MapKey.from_entry(e, src, tgt)
            path = self.store.root / e["path"]
            try:
                aligner, _ = load_checked(path, self.models[src].fingerprint, self.models[tgt].fingerprint)
            except (MapFileError, MapMismatchError) as err:
                log.warning("refusing map %s: %s", e["path"], err)
                refused.append({"path": e["path"], "reason": str(err)})
                continue
            entry = {**e, "source": src, "target": tgt}
            served.append(entry)
            renamed[f"{e['source']}__{e['target']}"] = f"{src}__{tgt}"
            paths[key] = path
            if len(loaded) < MAP_CACHE:  # checked maps stay loaded (up to the cache's size): no second read later
                loaded[key] = aligner
        if skipped:
            log.info("skipped %d maps fitted for models this server does not load", skipped)
        with self._lock:
            self.served, self.refused, self._paths, self._maps = served, refused, paths, loaded
        self.defaults = {renamed[k]: v for k, v in manifest.get("defaults", {}).items() if k in renamed}

    def close(self) -> None:
        """Close every backend and encoder (engine processes included)."""
        for alias, engine in [*self.backends.items(), *self.encoders.items()]:
            try:
                engine.close()
            except Exception:  # closing the others matters more than one failure here
                log.exception("closing the %s engine of %s failed", engine.name, alias)

    def require_ready(self) -> None:
        if self.status != "ready":
            raise NotReadyError(f"service is {self.status}: {self.detail}")

    # --- lookups ----------------------------------------------------------------------------------------------------
    def model(self, alias: str) -> ModelView:
        if alias not in self.models:
            raise NotFoundError(f"unknown model {alias!r}; loaded models: {sorted(self.models)}")
        return self.models[alias]

    def loaded(self, alias: str) -> LoadedModel:
        """A model loaded in this process (the single-process server's; the Ray ingress loads none)."""
        model = self.model(alias)
        if not isinstance(model, LoadedModel):
            raise TypeError(f"{alias} is not loaded in this process")
        return model

    def path(self, key: MapKey) -> Path:
        return self._paths[key]

    def aligner(self, key: MapKey) -> Aligner:
        """A served map, loaded (and checked) on first use and kept among the last ``MAP_CACHE`` used."""
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
            path = self._paths.get(key)
        if path is None:
            raise NotFoundError(f"no map {key.relpath} is served")
        src, tgt = self.models[key.source], self.models[key.target]
        try:
            aligner, _ = load_checked(path, src.fingerprint, tgt.fingerprint)
        except (MapFileError, MapMismatchError) as err:  # changed on disk since start
            raise NotFoundError(f"map {key.relpath} can no longer be served: {err}") from None
        with self._lock:
            self._maps[key] = aligner
            while len(self._maps) > MAP_CACHE:
                self._maps.popitem(last=False)
        return aligner
