"""Handover modes, one class each, and the registry every other part reads (HTTP schema, engine, eval, benchmarks,
backends).

Layers follow ``service.runtime.stack``'s convention (ℓ = ``hidden_states[ℓ]``).
    native      B reads the text itself: [start] + text ids + suffix ids.
    replace     B's start token at position 0 through all blocks; the mapped states take positions 1..n and enter at ℓ;
                blocks <= ℓ hold nothing for them; the suffix (e.g. the question) is read natively after them.
    full        like replace, but blocks <= ℓ also receive the prefix: block k <= ℓ gets ``layer_states[k-1]`` (the
                prefix's input states to that block, from per-layer maps) and computes its own keys and values.
    embeds      ℓ = 0: the mapped states are B's input embeddings, between B's start token and the suffix.
    last_token  B reads [start] + suffix natively; at ℓ the last suffix token's state is replaced, summed or averaged
                (``op``) with one handed-over vector (Communicating Activations, arXiv 2501.14082).

A mode owns: its name; the layer it injects at (``layer_for``) and whether it needs per-layer maps below it; how it
builds the target's ``Prompt`` from mapped states (``build``); its own checks on a prompt (``check``); how it prefills
the target (``prefill``); whether an engine that only takes token ids and input embeddings can run it
(``on_input_embeddings``); and its identity control (``identity``: the target handing its own states to itself).
Adding a mode = one class here, registered in ``MODES``, plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import torch

from aligners.resolve import Need
from service.runtime.loading import LoadedModel
from service.runtime.prompt import LastTokenOp, Prompt, pad_ids, pad_states, positions

if TYPE_CHECKING:
    from service.runtime.generate import Prefill

PrefillResult = tuple[torch.Tensor, list[int], dict[int, torch.Tensor]]


@dataclass
class Handed:
    """What a mode builds a prompt from: the target, the text, the suffix's target tokens, the mapped states per
    target layer they enter at ({ℓ: (n, d_B)}), the injection layer and (last_token) the op."""

    target: LoadedModel
    text: str
    suffix_ids: list[int]
    mapped: dict[int, torch.Tensor]
    layer: int
    op: LastTokenOp = "replace"


def start_ids(pf: Prefill) -> torch.Tensor:
    """The target's start token for every prompt of the batch: (B, 1)."""
    return torch.full((len(pf.prompts), 1), pf.target.start_token_id, dtype=torch.long, device=pf.stack.device)


def after_start(pf: Prefill, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[start] + each row's token ids, right-padded: ids and validity (B, 1 + T)."""
    ids, valid = pad_ids(rows, pf.stack.device)
    ones = torch.ones(len(rows), 1, dtype=torch.bool, device=pf.stack.device)
    return torch.cat([start_ids(pf), ids], dim=1), torch.cat([ones, valid], dim=1)


def check_layer(target: LoadedModel, prompt: Prompt) -> None:
    """An injection layer must be one a block reads: 0..N-1."""
    n_layers = target.n_layers
    if not 0 <= prompt.layer < n_layers:
        raise ValueError(
            f"layer must be in [0, {n_layers - 1}] for {target.name} ({n_layers} blocks), got {prompt.layer}"
        )


class HandoverMode:
    name: ClassVar[str] = ""
    uses_maps: ClassVar[bool] = True
    per_layer_maps: ClassVar[bool] = False  # needs maps into every layer below the injection layer (full)
    fixed_layer: ClassVar[int | None] = None  # embeds: always 0
    scores_continuation: ClassVar[bool] = True  # last_token's vector follows every scored token: no NLL to report
    needs_suffix: ClassVar[bool] = False

    def injection_layer(self, layer: int) -> int:
        """The layer a prompt of this mode enters the target at, given the prompt's ``layer``."""
        return layer

    def injects_at(self, map_layer: int) -> int:
        """The layer this mode injects at when its map enters the target at ``map_layer`` (embeds: always 0)."""
        return map_layer if self.fixed_layer is None else self.fixed_layer

    def prefix_len(self, prompt: Prompt) -> int:
        """How many handed-over positions the prompt places before its suffix."""
        return 0 if prompt.states is None else int(prompt.states.shape[0])

    def layer_for(self, requested: int | None) -> int | None:
        """The injection layer for a requested one (None = the default map's); refuses a layer the mode cannot use."""
        if self.fixed_layer is not None:
            if requested not in (None, self.fixed_layer):
                raise ValueError(f"mode {self.name!r} injects at layer {self.fixed_layer}, got layer={requested}")
            return self.fixed_layer
        return requested

    def map_layers(self, layer: int) -> list[int]:
        """The target layers whose maps this mode needs at injection layer ``layer``."""
        if not self.uses_maps:
            return []
        return list(range(layer + 1)) if self.per_layer_maps else [layer]

    def on_input_embeddings(self, layer: int) -> bool:
        """Whether an engine that takes only token ids and input embeddings (vLLM) can run this mode at ``layer``."""
        return False

    @property
    def need(self) -> Need:
        """What this mode needs of its maps, for the map resolver (``aligners.resolve.choose``)."""
        return Need(self.name, fixed_layer=self.fixed_layer, per_layer=self.per_layer_maps)

    def build(self, h: Handed) -> Prompt:
        return Prompt(self, h.suffix_ids, layer=h.layer, states=h.mapped[h.layer])

    def check(self, target: LoadedModel, prompt: Prompt) -> None:
        """This mode's checks of a prompt, before any model work."""
        check_layer(target, prompt)
        d = target.hidden_size
        if prompt.states is None or prompt.states.dim() != 2 or prompt.states.shape[1] != d:
            got = None if prompt.states is None else tuple(prompt.states.shape)
            raise ValueError(f"mode {self.name!r} needs states of shape (n, {d}), got {got}")

    def prefill(self, pf: Prefill, capture: set[int] | None) -> PrefillResult:
        raise NotImplementedError

    def identity(self, target: LoadedModel, text: str, suffix_ids: list[int], layer: int) -> Prompt:
        """The identity control: the target's own states for ``text`` handed to itself in this mode."""
        from service.runtime.encode import encode

        layers = self.map_layers(layer)
        states = encode(target, [text], layers)[0].states if layers else {}
        return self.build(Handed(target, text, suffix_ids, states, layer))


class Native(HandoverMode):
    name = "native"
    uses_maps = False

    def layer_for(self, requested: int | None) -> int | None:
        return None

    def injection_layer(self, layer: int) -> int:
        return 0  # B reads the text from its embeddings up

    def prefix_len(self, prompt: Prompt) -> int:
        return len(prompt.prefix_ids or [])

    def on_input_embeddings(self, layer: int) -> bool:
        return True

    def build(self, h: Handed) -> Prompt:
        return Prompt(self, h.suffix_ids, prefix_ids=h.target.tokenize(h.text)[0])

    def check(self, target: LoadedModel, prompt: Prompt) -> None:
        if prompt.prefix_ids is None:
            raise ValueError("mode 'native' needs prefix_ids (the target's own tokens of the text)")

    def prefill(self, pf: Prefill, capture: set[int] | None) -> PrefillResult:
        stack, b = pf.stack, len(pf.prompts)
        ids, valid = after_start(pf, [(p.prefix_ids or []) + p.suffix_ids for p in pf.prompts])
        h, cap = stack.run(stack.embed(ids), 0, stack.n_layers, positions([0] * b, valid), valid, pf.cache, capture)
        captured = {k: v[:, 1 : 1 + max(p.prefix_len for p in pf.prompts)] for k, v in cap.items()}
        pf.tails = [h[i, p.prefix_len : p.prefix_len + 1 + len(p.suffix_ids)] for i, p in enumerate(pf.prompts)]
        return pf.last_logits(h, valid), [int(v) for v in valid.sum(dim=1)], captured


class LastToken(HandoverMode):
    name = "last_token"
    scores_continuation = False
    needs_suffix = True

    def prefix_len(self, prompt: Prompt) -> int:
        return 0  # the handed-over vector sits on the suffix's last token

    def build(self, h: Handed) -> Prompt:
        return Prompt(self, h.suffix_ids, layer=h.layer, last_state=h.mapped[h.layer][-1], op=h.op)

    def check(self, target: LoadedModel, prompt: Prompt) -> None:
        check_layer(target, prompt)
        d = target.hidden_size
        if prompt.last_state is None or tuple(prompt.last_state.shape) != (d,):
            raise ValueError(f"mode 'last_token' needs last_state of shape ({d},)")
        if prompt.op not in ("replace", "sum", "mean"):
            raise ValueError(f"op must be replace, sum or mean, got {prompt.op!r}")
        if not prompt.suffix_ids:
            raise ValueError("mode 'last_token' needs a suffix (the prompt B reads) to place the handed-over state on")

    def prefill(self, pf: Prefill, capture: set[int] | None) -> PrefillResult:
        stack, b = pf.stack, len(pf.prompts)
        ids, valid = after_start(pf, [p.suffix_ids for p in pf.prompts])
        pos = positions([0] * b, valid)
        h, _ = stack.run(stack.embed(ids), 0, pf.layer, pos, valid, pf.cache)
        h = h.clone()
        for i, p in enumerate(pf.prompts):
            assert p.last_state is not None
            last = int(valid[i].sum()) - 1
            given = p.last_state.to(device=h.device, dtype=h.dtype)
            h[i, last] = {"replace": given, "sum": h[i, last] + given, "mean": (h[i, last] + given) / 2}[p.op]
        h, _ = stack.run(h, pf.layer, stack.n_layers, pos, valid, pf.cache)
        pf.tails = [h[i, : 1 + len(p.suffix_ids)] for i, p in enumerate(pf.prompts)]
        return pf.last_logits(h, valid), [int(v) for v in valid.sum(dim=1)], {}


class Replace(HandoverMode):
    name = "replace"

    def on_input_embeddings(self, layer: int) -> bool:
        return layer == 0  # at layer 0 the mapped states are input embeddings

    def prefill(self, pf: Prefill, capture: set[int] | None) -> PrefillResult:
        """Start token through blocks <= ℓ (``_lower``), then [start, prefix] through blocks > ℓ, then the suffix."""
        stack, dev, b = pf.stack, pf.stack.device, len(pf.prompts)
        ones = torch.ones(b, 1, dtype=torch.bool, device=dev)
        layer, n_layers = pf.layer, stack.n_layers
        d, dtype = stack.hidden_size, stack.dtype
        states = pad_states([p.states for p in pf.prompts if p.states is not None], d, dtype, dev)
        pre_valid = torch.zeros(b, states.shape[1], dtype=torch.bool, device=dev)
        for i, p in enumerate(pf.prompts):
            pre_valid[i, : p.prefix_len] = True
        joint_valid = torch.cat([ones, pre_valid], dim=1)
        joint_pos = positions([0] * b, joint_valid)
        h_start = self._lower(pf, joint_pos, joint_valid)
        joint = torch.cat([h_start.to(states.device), states], dim=1)
        h, cap = stack.run(joint, layer, n_layers, joint_pos, joint_valid, pf.cache, capture, pf.grad)
        captured = {k: v[:, 1:] for k, v in cap.items()}
        next_pos = [1 + p.prefix_len for p in pf.prompts]

        suffix_ids, suffix_valid = pad_ids([p.suffix_ids for p in pf.prompts], dev)
        last_prefix = [h[i, p.prefix_len : p.prefix_len + 1] for i, p in enumerate(pf.prompts)]
        if suffix_ids.shape[1] == 0:
            pf.tails = last_prefix
            return pf.last_logits(h, joint_valid), next_pos, captured
        spos = positions(next_pos, suffix_valid)
        hs, _ = stack.run(stack.embed(suffix_ids), 0, n_layers, spos, suffix_valid, pf.cache, grad=pf.grad)
        pf.tails = [
            torch.cat([last_prefix[i], hs[i, : len(p.suffix_ids)].to(last_prefix[i].device)])
            for i, p in enumerate(pf.prompts)
        ]
        logits = pf.last_logits(hs, suffix_valid)
        # Prompts without a suffix take their logits from the prefix pass.
        no_suffix = [i for i, p in enumerate(pf.prompts) if not p.suffix_ids]
        if no_suffix:
            logits[no_suffix] = pf.last_logits(h, joint_valid)[no_suffix]
        return logits, [n + len(p.suffix_ids) for n, p in zip(next_pos, pf.prompts, strict=True)], captured

    def _lower(self, pf: Prefill, joint_pos: torch.Tensor, joint_valid: torch.Tensor) -> torch.Tensor:
        """The start token's state at ℓ; blocks <= ℓ hold nothing for the prefix."""
        b, dev = len(pf.prompts), pf.stack.device
        zero = torch.zeros(b, 1, dtype=torch.long, device=dev)
        ones = torch.ones(b, 1, dtype=torch.bool, device=dev)
        h_start, _ = pf.stack.run(pf.stack.embed(start_ids(pf)), 0, pf.layer, zero, ones, pf.cache)
        return h_start


class Embeds(Replace):
    name = "embeds"
    fixed_layer = 0

    def check(self, target: LoadedModel, prompt: Prompt) -> None:
        if prompt.layer != self.fixed_layer:
            raise ValueError(f"mode 'embeds' injects at layer {self.fixed_layer}")
        super().check(target, prompt)


class Full(Replace):
    name = "full"
    per_layer_maps = True

    def on_input_embeddings(self, layer: int) -> bool:
        return False

    def build(self, h: Handed) -> Prompt:
        below = {k: v for k, v in h.mapped.items() if k < h.layer}
        return Prompt(self, h.suffix_ids, layer=h.layer, states=h.mapped[h.layer], layer_states=below)

    def check(self, target: LoadedModel, prompt: Prompt) -> None:
        super().check(target, prompt)
        need, have = set(range(prompt.layer)), set(prompt.layer_states or {})
        if have != need:
            raise ValueError(
                f"mode 'full' at layer {prompt.layer} needs layer_states for {sorted(need)}, got {sorted(have)}"
            )
        assert prompt.states is not None
        for k, s in (prompt.layer_states or {}).items():
            if tuple(s.shape) != tuple(prompt.states.shape):
                raise ValueError(f"layer_states[{k}] has shape {tuple(s.shape)}, expected {tuple(prompt.states.shape)}")

    def _lower(self, pf: Prefill, joint_pos: torch.Tensor, joint_valid: torch.Tensor) -> torch.Tensor:
        """Blocks 1..ℓ see the prefix through per-layer states; the start token's own state flows through."""
        if pf.layer == 0:
            return super()._lower(pf, joint_pos, joint_valid)
        stack, dev = pf.stack, pf.stack.device
        d, dtype = stack.hidden_size, stack.dtype
        h_start = stack.embed(start_ids(pf))
        for k in range(pf.layer):
            below = pad_states([p.layer_states[k] for p in pf.prompts if p.layer_states], d, dtype, dev)
            inputs = torch.cat([h_start.to(dev, dtype), below], dim=1)
            out, _ = stack.run(inputs, k, k + 1, joint_pos, joint_valid, pf.cache, grad=pf.grad)
            h_start = out[:, :1]
        return h_start


MODES: dict[str, HandoverMode] = {m.name: m for m in (Native(), Replace(), Full(), Embeds(), LastToken())}
HANDOVER_MODES = tuple(name for name, m in MODES.items() if m.uses_maps)  # every mode but native


def parse_handover_modes(text: str) -> list[str]:
    """A comma-separated list of handover modes (CLI options); unknown names are refused, naming the allowed ones."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in HANDOVER_MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; choose from {', '.join(HANDOVER_MODES)}")
    return modes


def get_mode(name: str) -> HandoverMode:
    """The mode of a name, where a name comes in (a request, an option); refuses an unknown one."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose one of {list(MODES)}")
    return MODES[name]


Mode: TypeAlias = "HandoverMode | str"  # what the Python API takes: a mode, or its name


def as_mode(mode: Mode) -> HandoverMode:
    """A mode given as itself or by name (the Python API's edge)."""
    return mode if isinstance(mode, HandoverMode) else get_mode(mode)


NATIVE, REPLACE, EMBEDS = MODES["native"], MODES["replace"], MODES["embeds"]


def default_mode(layer: int | None) -> HandoverMode:
    """The mode of a handover that names none: ``embeds`` where it enters the target at layer 0, ``replace``
    otherwise (also how a map into ``layer`` is trained and scored)."""
    return EMBEDS if layer == EMBEDS.fixed_layer else REPLACE
