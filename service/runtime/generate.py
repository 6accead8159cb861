"""Continue generation in the target model from a handed-over prefix: prefill (per mode, ``modes``), sampling,
stop strings, streaming, batches of prompts that share a mode and layer (lengths may differ: padding is masked,
positions explicit)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from service.runtime.loading import LoadedModel
from service.runtime.prompt import Prompt
from service.runtime.stack import KVCache


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int  # positions the target model attended over before generating (start + prefix + suffix)
    # Where the handover was prepared elsewhere (a source deployment): its source token count and timings.
    source_tokens: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class StepEvent:
    """One decoding step for one request of a batch: the new text (may be empty while a stop string is undecided)."""

    index: int
    token_id: int
    delta: str
    finished: bool
    completion: Completion | None = None
    error: Exception | None = None  # this request failed (e.g. its prompt could not be built); the others go on


def check_prompt(target: LoadedModel, prompt: Prompt) -> None:
    """Raise ValueError for a prompt the target cannot take (checked before any model work)."""
    prompt.mode.check(target, prompt)


class Prefill:
    """Builds the per-block caches for a batch of prompts and returns the logits of each prompt's last position."""

    def __init__(self, target: LoadedModel, prompts: list[Prompt], grad: bool = False) -> None:
        if not prompts:
            raise ValueError("no prompts to generate from")
        modes = {(p.mode.name, p.mode.injection_layer(p.layer)) for p in prompts}
        if len(modes) != 1:
            raise ValueError(f"one batch must share mode and layer, got {sorted(modes)}")
        for p in prompts:
            check_prompt(target, p)
        self.target, self.prompts = target, prompts
        self.stack = target.stack
        self.cache = KVCache.empty(self.stack.n_layers)
        self.grad = grad  # record autograd history from the handed-over states to the outputs (training a map)
        self.mode = prompts[0].mode
        self.layer = self.mode.injection_layer(prompts[0].layer)
        # Per prompt, final hidden states (before the norm) from the last position before the suffix through the end
        # of the suffix: what scoring the suffix's likelihood needs. Set by run().
        self.tails: list[torch.Tensor] = []

    def run(self, capture: set[int] | None = None) -> tuple[torch.Tensor, list[int], dict[int, torch.Tensor]]:
        """Returns (last logits (B, vocab), next position per prompt, captured prefix states per layer (B, n, d))."""
        return self.mode.prefill(self, capture)

    def last_logits(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        last = valid.sum(dim=1) - 1
        rows = h[torch.arange(h.shape[0], device=h.device), last.to(h.device)]
        return self.stack.logits(rows)


def suffix_nll(target: LoadedModel, prompts: list[Prompt]) -> list[float]:
    """Mean negative log-likelihood (nats per token) of each prompt's suffix tokens, given what precedes them."""
    prefill = Prefill(target, prompts)
    prefill.run()
    out = []
    for tail, p in zip(prefill.tails, prompts, strict=True):
        if not p.suffix_ids:
            raise ValueError("suffix_nll needs a non-empty suffix to score")
        logits = target.stack.logits(tail[:-1])  # position t predicts suffix token t
        targets = torch.tensor(p.suffix_ids, device=logits.device)
        out.append(float(torch.nn.functional.cross_entropy(logits, targets)))
    return out


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token from (vocab,) logits: greedy at temperature 0, else temperature + nucleus sampling."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    # Shifted so that the largest logit is 0, and in float64: a temperature below float32's smallest number (down
    # to float64's, 5e-324) still divides, and the limit of vanishing temperatures is the greedy token, not NaN.
    shifted = logits.double() - logits.max().double()
    probs = torch.softmax(shifted / params.temperature, dim=-1).float()
    if params.top_p < 1.0:
        probs = nucleus(probs, params.top_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def nucleus(probs: torch.Tensor, top_p: float, first: int = 1024) -> torch.Tensor:
    """``probs`` (vocab,) with only the smallest most-probable set reaching ``top_p`` kept (the top token always).

    Looks among the ``first`` most probable tokens, and sorts the whole vocabulary only when their mass falls short
    of ``top_p``: the same set a full sort keeps, without sorting a large vocabulary (262k for Gemma 3) at most
    steps of peaked distributions."""
    top, order = torch.topk(probs, min(first, probs.numel()))
    mass = torch.cumsum(top, dim=-1)
    if mass[-1] < top_p:
        top, order = torch.sort(probs, descending=True)
        mass = torch.cumsum(top, dim=-1)
    keep = mass - top < top_p  # the mass of the tokens ahead of each
    keep[0] = True  # the top token always stays, also for a top_p that is 0 in the probabilities' precision
    return torch.zeros_like(probs).scatter(0, order[keep], top[keep])


def _holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still begin a stop string (not yet safe to stream)."""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                keep = max(keep, k)
                break
    return keep


class _Request:
    """Decoding state of one prompt in a batch."""

    def __init__(self, target: LoadedModel, params: SamplingParams, prompt_tokens: int) -> None:
        self.target, self.params = target, params
        self.ids: list[int] = []
        self.sent = 0  # characters already streamed
        self.done = False
        self.text = ""
        self.finish: Literal["stop", "length"] = "length"
        self.prompt_tokens = prompt_tokens
        self.generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)

    def push(self, token: int) -> str:
        """Add a token; returns the text that is now safe to stream."""
        if token in self.target.eos_token_ids and not self.params.ignore_eos:
            self.done, self.finish = True, "stop"
        else:
            self.ids.append(token)
            self.text = self.target.decode_continuation(self.ids)
            cut = min((self.text.find(s) for s in self.params.stop if s and s in self.text), default=-1)
            if cut >= 0:
                self.text, self.done, self.finish = self.text[:cut], True, "stop"
            elif len(self.ids) >= self.params.max_new_tokens:
                self.done, self.finish = True, "length"
        safe = len(self.text) if self.done else len(self.text) - _holdback(self.text, self.params.stop)
        safe = max(safe, self.sent)
        delta, self.sent = self.text[self.sent : safe], safe
        return delta

    def completion(self) -> Completion:
        return Completion(self.text, list(self.ids), self.finish, self.prompt_tokens)


def stream_batch(
    target: LoadedModel,
    prompts: list[Prompt],
    params: list[SamplingParams],
    stop: Callable[[int], bool] | None = None,
) -> Iterator[StepEvent]:
    """Generate for a batch, yielding one event per request per step until every request has finished.

    ``stop(i)`` is asked before each of request i's steps; when it says yes the request ends there with one event
    ``finished=True, completion=None`` and takes no more compute (its batch slot stays masked)."""
    if len(params) != len(prompts):
        raise ValueError("one SamplingParams per prompt")
    for p in params:
        if p.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {p.max_new_tokens}")
    prefill = Prefill(target, prompts)
    logits, next_pos, _ = prefill.run()
    requests = [_Request(target, sp, pos) for sp, pos in zip(params, next_pos, strict=True)]
    stack, cache, dev = target.stack, prefill.cache, target.stack.device
    while True:
        tokens = []
        for i, req in enumerate(requests):
            if req.done:
                tokens.append(0)
                continue
            if stop is not None and stop(i):
                req.done = True
                tokens.append(0)
                yield StepEvent(i, -1, "", True, None)
                continue
            token = sample(logits[i], req.params, req.generator)
            tokens.append(token)
            delta = req.push(token)
            yield StepEvent(i, token, delta, req.done, req.completion() if req.done else None)
        active = [not r.done for r in requests]
        if not any(active):
            return
        ids = torch.tensor(tokens, dtype=torch.long, device=dev)[:, None]
        valid = torch.tensor(active, dtype=torch.bool, device=dev)[:, None]
        pos = torch.tensor(next_pos, dtype=torch.long, device=dev)[:, None]
        h, _ = stack.run(stack.embed(ids), 0, stack.n_layers, pos, valid, cache)
        logits = stack.logits(h[:, -1])
        next_pos = [p + int(a) for p, a in zip(next_pos, active, strict=True)]


def generate(
    target: LoadedModel, prompts: list[Prompt], params: SamplingParams | list[SamplingParams]
) -> list[Completion]:
    """Generate to completion for a batch of prompts (one SamplingParams for all, or one each)."""
    per = params if isinstance(params, list) else [params] * len(prompts)
    out: list[Completion | None] = [None] * len(prompts)
    for event in stream_batch(target, prompts, per):
        if event.completion is not None:
            out[event.index] = event.completion
    return [c for c in out if c is not None]
