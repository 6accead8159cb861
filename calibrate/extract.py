"""Run a model over passages and keep its per-token states at chosen layers, cached on disk as float16.

The cache lives under ``<cache>/states/<model fingerprint>-<key>/`` where the key hashes the layers and the texts, in
shards of ``SHARD`` texts (``part-00000.safetensors``: ``L<layer>`` (tokens, d) float16, ``ids``, ``offsets``,
``lengths``). Finished shards are reused, so an interrupted run resumes and a refit with other methods or ridge
strengths does not rerun the models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from service.runtime.encode import Encoded, encode
from service.runtime.loading import LoadedModel

SHARD = 64


def cache_dir(root: Path, model: LoadedModel, layers: list[int], texts: list[str]) -> Path:
    digest = hashlib.sha256(json.dumps([sorted(layers), texts]).encode()).hexdigest()[:12]
    return root / "states" / f"{model.fingerprint}-{digest}"


def _save_shard(path: Path, encoded: list[Encoded], layers: list[int]) -> None:
    tensors = {f"L{layer}": torch.cat([e.states[layer] for e in encoded]).to(torch.float16) for layer in layers}
    tensors["ids"] = torch.tensor([i for e in encoded for i in e.ids], dtype=torch.long)
    tensors["offsets"] = torch.tensor([o for e in encoded for o in e.offsets], dtype=torch.long).reshape(-1, 2)
    tensors["lengths"] = torch.tensor([len(e.ids) for e in encoded], dtype=torch.long)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load_shard(path: Path, texts: list[str], layers: list[int]) -> list[Encoded]:
    t = load_file(str(path))
    out, start = [], 0
    for text, length in zip(texts, t["lengths"].tolist(), strict=True):
        end = start + length
        out.append(
            Encoded(
                text=text,
                ids=t["ids"][start:end].tolist(),
                offsets=[(int(a), int(b)) for a, b in t["offsets"][start:end].tolist()],
                states={layer: t[f"L{layer}"][start:end] for layer in layers},
            )
        )
        start = end
    return out


def extract(model: LoadedModel, texts: list[str], layers: list[int], root: Path, batch_size: int = 8) -> list[Encoded]:
    """States of ``texts`` at ``layers`` (float16, on CPU), from the cache where present."""
    folder = cache_dir(root, model, layers, texts)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Encoded] = []
    shards = range(0, len(texts), SHARD)
    for start in tqdm(shards, desc=f"states {model.name}", unit="shard", leave=False):
        chunk = texts[start : start + SHARD]
        path = folder / f"part-{start // SHARD:05d}.safetensors"
        if not path.exists():
            _save_shard(path, encode(model, chunk, layers, batch_size=batch_size), layers)
        out.extend(_load_shard(path, chunk, layers))
    return out
