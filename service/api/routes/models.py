"""The loaded models and the maps served between them."""

from __future__ import annotations

from fastapi import APIRouter

from aligners.store import same_map
from service.api.deps import Authorized, StateDep
from service.api.schemas import MapInfo, ModelInfo, ModelsResponse, RefusedMap

router = APIRouter(tags=["models"], dependencies=[Authorized])


@router.get("/v1/models", response_model=ModelsResponse, summary="Loaded models and available maps")
def list_models(state: StateDep) -> ModelsResponse:
    state.require_ready()
    models = [
        ModelInfo(
            alias=alias,
            architecture=m.architecture,
            layers=m.n_layers,
            hidden_size=m.hidden_size,
            fingerprint=m.fingerprint,
            device=m.device,
            backend=state.engine_names(alias)[0],
            encoder=state.engine_names(alias)[1],
        )
        for alias, m in sorted(state.models.items())
    ]
    maps = []
    for e in state.served:
        d = state.defaults.get(f"{e['source']}__{e['target']}", {})
        is_default = same_map(d, e)
        maps.append(
            MapInfo(
                source=e["source"],
                target=e["target"],
                source_layer=e["source_layer"],
                source_layers=e.get("source_layers"),
                target_layer=e["target_layer"],
                method=e["method"],
                metrics=e.get("metrics", {}),
                eval=e.get("eval", {}),
                default=is_default,
            )
        )
    return ModelsResponse(models=models, maps=maps, refused_maps=[RefusedMap(**r) for r in state.refused])
