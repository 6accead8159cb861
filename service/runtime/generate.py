"""Continue generation in the target model from a handed-over prefix.

Modes (layer ℓ per ``service.runtime.stack``'s convention):
    native      B reads the text itself: [start] + text ids + suffix ids.
    replace     B's start token at position 0 through all blocks; the mapped states take positions 1..n and enter at ℓ;
                blocks <= ℓ hold nothing for them; the suffix (e.g. the question) is read natively after them.
    full        like replace, but blocks <= ℓ also receive the prefix: block k <= ℓ gets ``layer_states[k-1]`` (the
                prefix's input states to that block, from per-layer maps) and computes its own keys and values.
    embeds      ℓ = 0: the mapped states are B's input embeddings, between B's start token and the suffix.
    last_token  B reads [start] + suffix natively; at ℓ the last suffix token's state is replaced, summed or averaged
                (``op``) with one handed-over vector (Communicating Activations, arXiv 2501.14082).
All prompts of one batch share a mode and layer; their lengths may differ (padding is masked, positions explicit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from service.runtime.loading import LoadedModel
from service.runtime.stack import KVCache

Mode = Literal["native", "replace", "full", "embeds", "last_token"]
MODES: tuple[str, ...] = ("native", "replace", "full", "embeds", "last_token")
LastTokenOp = Literal["replace", "sum", "mean"]


@dataclass
class Prompt:
    """What the target model receives for one request."""

    mode: Mode
    suffix_ids: list[int] = field(default_factory=list)
    layer: int = 0
    prefix_ids: list[int] | None = None  # native: B's own tokens of the text
    states: torch.Tensor | None = None  # replace/full/embeds: (n, d_B) states entering at `layer`
    layer_states: dict[int, torch.Tensor] | None = None  # full: k -> (n, d_B) input of block k+1, for k < layer
    last_state: torch.Tensor | None = None  # last_token: (d_B,)
    op: LastTokenOp = "replace"

    @property
    def prefix_len(self) -> int:
        if self.mode == "native":
            return len(self.prefix_ids or [])
        if self.mode == "last_token":
            return 0
        return 0 if self.states is None else int(self.states.shape[0])


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


@dataclass
class StepEvent:
    """One decoding step for one request of a batch: the new text (may be empty while a stop string is undecided)."""

    index: int
    token_id: int
    delta: str
    finished: bool
    completion: Completion | None = None


def check_prompt(target: LoadedModel, prompt: Prompt) -> None:
    """Raise ValueError for a prompt the target cannot take (checked before any model work)."""
    n_layers, d = target.n_layers, target.hidden_size
    if prompt.mode not in MODES:
        raise ValueError(f"unknown mode {prompt.mode!r}; choose one of {list(MODES)}")
    if prompt.mode in ("replace", "full", "last_token") and not 0 <= prompt.layer < n_layers:
        raise ValueError(
            f"layer must be in [0, {n_layers - 1}] for {target.name} ({n_layers} blocks), got {prompt.layer}"
        )
    if prompt.mode == "embeds" and prompt.layer != 0:
        raise ValueError("mode 'embeds' injects at layer 0")
    if prompt.mode == "native" and prompt.prefix_ids is None:
        raise ValueError("mode 'native' needs prefix_ids (the target's own tokens of the text)")
    needs_states = prompt.mode in ("replace", "full", "embeds")
    if needs_states and (prompt.states is None or prompt.states.dim() != 2 or prompt.states.shape[1] != d):
        got = None if prompt.states is None else tuple(prompt.states.shape)
        raise ValueError(f"mode {prompt.mode!r} needs states of shape (n, {d}), got {got}")
    if prompt.mode == "full":
        need = set(range(prompt.layer))
        have = set(prompt.layer_states or {})
        if have != need:
            raise ValueError(
                f"mode 'full' at layer {prompt.layer} needs layer_states for {sorted(need)}, got {sorted(have)}"
            )
        assert prompt.states is not None
        for k, s in (prompt.layer_states or {}).items():
            if tuple(s.shape) != tuple(prompt.states.shape):
                raise ValueError(f"layer_states[{k}] has shape {tuple(s.shape)}, expected {tuple(prompt.states.shape)}")
    if prompt.mode == "last_token":
        if prompt.last_state is None or tuple(prompt.last_state.shape) != (d,):
            raise ValueError(f"mode 'last_token' needs last_state of shape ({d},)")
        if prompt.op not in ("replace", "sum", "mean"):
            raise ValueError(f"op must be replace, sum or mean, got {prompt.op!r}")
    if prompt.mode == "last_token" and not prompt.suffix_ids:
        raise ValueError("mode 'last_token' needs a suffix (the prompt B reads) to place the handed-over state on")


def _pad_ids(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows to (B, T) ids and validity."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        valid[i, : len(r)] = True
    return ids.to(device), valid.to(device)


def _pad_states(rows: list[torch.Tensor], d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    width = max((r.shape[0] for r in rows), default=0)
    out = torch.zeros(len(rows), width, d, dtype=dtype, device=device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r.to(device=device, dtype=dtype)
    return out


def _positions(starts: list[int], valid: torch.Tensor) -> torch.Tensor:
    """Absolute positions start_i + t for every slot t (padding slots get a harmless in-range value)."""
    t = torch.arange(valid.shape[1], device=valid.device)
    return torch.tensor(starts, device=valid.device)[:, None] + t[None, :]


class Prefill:
    """Builds the per-block caches for a batch of prompts and returns the logits of each prompt's last position."""

    def __init__(self, target: LoadedModel, prompts: list[Prompt], grad: bool = False) -> None:
        if not prompts:
            raise ValueError("no prompts to generate from")
        modes = {(p.mode, p.layer if p.mode != "native" else 0) for p in prompts}
        if len(modes) != 1:
            raise ValueError(f"one batch must share mode and layer, got {sorted(modes)}")
        for p in prompts:
            check_prompt(target, p)
        self.target, self.prompts = target, prompts
        self.stack = target.stack
        self.cache = KVCache.empty(self.stack.n_layers)
        self.grad = grad  # record autograd history from the handed-over states to the outputs (training a map)
        self.mode = prompts[0].mode
        self.layer = prompts[0].layer if self.mode != "native" else 0
        # Per prompt, final hidden states (before the norm) from the last position before the suffix through the end
        # of the suffix: what scoring the suffix's likelihood needs. Set by run().
        self.tails: list[torch.Tensor] = []

    def run(self, capture: set[int] | None = None) -> tuple[torch.Tensor, list[int], dict[int, torch.Tensor]]:
        """Returns (last logits (B, vocab), next position per prompt, captured prefix states per layer (B, n, d))."""
        stack, dev, n_layers = self.stack, self.stack.device, self.stack.n_layers
        b = len(self.prompts)
        ones = torch.ones(b, 1, dtype=torch.bool, device=dev)
        start_ids = torch.full((b, 1), self.target.start_token_id, dtype=torch.long, device=dev)
        zero = torch.zeros(b, 1, dtype=torch.long, device=dev)
        captured: dict[int, torch.Tensor] = {}

        if self.mode == "native":
            rows = [(p.prefix_ids or []) + p.suffix_ids for p in self.prompts]
            ids, valid = _pad_ids(rows, dev)
            ids = torch.cat([start_ids, ids], dim=1)
            valid = torch.cat([ones, valid], dim=1)
            h, cap = stack.run(
                stack.embed(ids), 0, n_layers, _positions([0] * b, valid), valid, self.cache, None, capture
            )
            captured = {k: v[:, 1 : 1 + max(p.prefix_len for p in self.prompts)] for k, v in cap.items()}
            self.tails = [h[i, p.prefix_len : p.prefix_len + 1 + len(p.suffix_ids)] for i, p in enumerate(self.prompts)]
            return self._last_logits(h, valid), [int(v) for v in valid.sum(dim=1)], captured

        if self.mode == "last_token":
            ids, valid = _pad_ids([p.suffix_ids for p in self.prompts], dev)
            ids, valid = torch.cat([start_ids, ids], dim=1), torch.cat([ones, valid], dim=1)
            pos = _positions([0] * b, valid)
            h, _ = stack.run(stack.embed(ids), 0, self.layer, pos, valid, self.cache)
            h = h.clone()
            for i, p in enumerate(self.prompts):
                assert p.last_state is not None
                last = int(valid[i].sum()) - 1
                given = p.last_state.to(device=h.device, dtype=h.dtype)
                h[i, last] = {"replace": given, "sum": h[i, last] + given, "mean": (h[i, last] + given) / 2}[p.op]
            h, _ = stack.run(h, self.layer, n_layers, pos, valid, self.cache)
            self.tails = [h[i, : 1 + len(p.suffix_ids)] for i, p in enumerate(self.prompts)]
            return self._last_logits(h, valid), [int(v) for v in valid.sum(dim=1)], captured

        # replace / full / embeds: start token through blocks <= ℓ, then [start, prefix] through blocks > ℓ.
        layer = self.layer
        d, dtype = stack.hidden_size, stack.dtype
        states = _pad_states([p.states for p in self.prompts if p.states is not None], d, dtype, dev)
        pre_valid = torch.zeros(b, states.shape[1], dtype=torch.bool, device=dev)
        for i, p in enumerate(self.prompts):
            pre_valid[i, : p.prefix_len] = True
        joint_valid = torch.cat([ones, pre_valid], dim=1)
        joint_pos = _positions([0] * b, joint_valid)
        h0 = stack.embed(start_ids)
        if self.mode == "full" and layer > 0:
            # Blocks 1..ℓ see the prefix through per-layer states; the start token's own state flows through.
            inputs = {
                k: torch.cat(
                    [
                        torch.zeros(b, 1, d, dtype=dtype, device=dev),
                        _pad_states([p.layer_states[k] for p in self.prompts if p.layer_states], d, dtype, dev),
                    ],
                    dim=1,
                )
                for k in range(layer)
            }
            h_start = h0
            for k in range(layer):
                inputs[k][:, :1] = h_start.to(inputs[k].device)
                out, _ = stack.run(inputs[k], k, k + 1, joint_pos, joint_valid, self.cache, grad=self.grad)
                h_start = out[:, :1]
        else:
            h_start, _ = stack.run(h0, 0, layer, zero, ones, self.cache)
        joint = torch.cat([h_start.to(states.device), states], dim=1)
        h, cap = stack.run(joint, layer, n_layers, joint_pos, joint_valid, self.cache, None, capture, self.grad)
        captured = {k: v[:, 1:] for k, v in cap.items()}
        next_pos = [1 + p.prefix_len for p in self.prompts]

        suffix_ids, suffix_valid = _pad_ids([p.suffix_ids for p in self.prompts], dev)
        last_prefix = [h[i, p.prefix_len : p.prefix_len + 1] for i, p in enumerate(self.prompts)]
        if suffix_ids.shape[1] == 0:
            self.tails = last_prefix
            return self._last_logits(h, joint_valid), next_pos, captured
        spos = _positions(next_pos, suffix_valid)
        hs, _ = stack.run(stack.embed(suffix_ids), 0, n_layers, spos, suffix_valid, self.cache, grad=self.grad)
        self.tails = [
            torch.cat([last_prefix[i], hs[i, : len(p.suffix_ids)].to(last_prefix[i].device)])
            for i, p in enumerate(self.prompts)
        ]
        logits = self._last_logits(hs, suffix_valid)
        # Prompts without a suffix take their logits from the prefix pass.
        no_suffix = [i for i, p in enumerate(self.prompts) if not p.suffix_ids]
        if no_suffix:
            from_prefix = self._last_logits(h, joint_valid)
            logits[no_suffix] = from_prefix[no_suffix]
        return logits, [n + len(p.suffix_ids) for n, p in zip(next_pos, self.prompts, strict=True)], captured

    def _last_logits(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
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
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


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
