"""Train maps through the frozen target model, and score any map by what the target then does (a label-free proxy).

Teacher: the target reading a passage natively, then a probe (``calibrate.probes``); at each probe token its top-k
next-token log-probabilities and its final hidden state (after the final norm) are kept, computed once per run and
cached on disk. Student: the same probe read after the passage arrives through the source model and the map, in the
mode ``modes.default_mode`` gives the map's target layer (``embeds`` into layer 0, ``replace`` deeper). Loss per
probe token:

    KL(teacher ‖ student) over the teacher's top-k tokens plus one bin for the rest of the vocabulary
    + hidden_weight · ‖norm(h_student) − norm(h_teacher)‖² / mean ‖norm(h_teacher)‖²
    + anchor · ‖W − W₀‖² / ‖W₀‖²  (keeps the affine part near its least-squares start)

Student logits are computed only at probe positions (a 262k-token head dominates otherwise). The target's weights
are frozen (``frozen``) and never change. Adam (step sizes relative to each parameter's scale: ``step_sizes``),
seeded shuffles, held-out KL every ``eval_every`` steps, early stopping with the best held-out state kept, a
wall-clock budget. An evaluation no better than the best sends training back to the best state with every step size
multiplied by ``backoff`` (and Adam's moments reset): a step size too large for a map loses nothing but the steps
since, instead of leaving the map where it diverged. With ``ema`` > 0 the map that is scored, kept and installed is
an exponential moving average of the trained parameters (started at the least-squares map, updated after every step
with weight 1 − ema). With ``snap`` > 0 (``Through.train``) a map into the target's input embeddings is trained (and
early-stopped) as it will be served with that snap weight: its outputs move ``snap`` of the way to their nearest
embedding rows (``toward_vocabulary``), searched among the rows of the tokens the target cuts the calibration text
into (a cheap stand-in for the whole table, which `fit` then uses to choose the served weight).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from aligners import Aligner, Distill
from aligners.modules import MapModule
from aligners.store import best_first
from calibrate.probes import Probe
from service.runtime.encode import Encoded
from service.runtime.generate import Prefill
from service.runtime.loading import LoadedModel
from service.runtime.modes import NATIVE, default_mode
from service.runtime.prompt import Prompt
from service.runtime.snap import toward_vocabulary
from service.runtime.stack import frozen


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().square().mean().sqrt())


def step_sizes(module: MapModule, x: torch.Tensor, rel: float) -> list[dict[str, Any]]:
    """Adam parameter groups whose step size is ``rel`` times each tensor's own scale, so that maps between models
    whose hidden states differ in scale by orders of magnitude learn alike: a weight's RMS at the start (for the
    zero-initialised MLP output layer, the RMS that maps its input to the outputs' scale); for a bias, the RMS of
    what it adds to (the map's outputs on ``x``; the MLP's pre-activations). With a preconditioned module
    (``MapModule.precondition`` by each input dimension's RMS) the weight's steps are also alike across input
    dimensions of any size, and training is invariant to rescaling any of them; preconditioned by each output
    dimension's RMS too, every output dimension moves by steps of its own size (the affine part's bias by the RMS of
    what it adds to before the output scale)."""
    with torch.no_grad():
        out = _rms(module(x))
        inner = _rms(module.affine(x, scaled_out=False))
        hidden = None
        if module.mlp_in is not None:
            pre = module.mlp_in(module.mlp_input(x))
            hidden = (_rms(pre), _rms(torch.nn.functional.gelu(pre)))
    groups = []
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            scale = inner if name == "bias" else hidden[0] if name == "mlp_in.bias" and hidden else out
        elif name == "mlp_out.weight" and hidden:
            scale = out / (hidden[1] * p.shape[1] ** 0.5)
        else:
            scale = _rms(p)
        groups.append({"params": [p], "lr": rel * max(scale, 1e-12)})
    return groups


def _raw(module: MapModule) -> dict[str, torch.Tensor]:
    """A copy of the module's parameters as it holds them (preconditioned or not), to go back to."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _installed(module: MapModule, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``module`` set to ``state`` (as ``_raw`` copied it); its parameters as the map file holds them (unscaled)."""
    module.load_state_dict(state)
    return module.tensors()


def _back_to(
    state: dict[str, torch.Tensor],
    module: MapModule,
    scored: MapModule,
    optimizer: torch.optim.Optimizer,
    factor: float,
) -> None:
    """Training goes back to ``state`` (the trained module and the scored one, its average where they differ), with
    every step size multiplied by ``factor`` and Adam's moments reset."""
    module.load_state_dict(state)
    if scored is not module:
        scored.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] *= factor
    optimizer.state.clear()


def make_optimizer(module: MapModule, sample: torch.Tensor, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam for ``module``: with ``cfg.lr``, one step size for every parameter; without, the module preconditioned by
    each input dimension's RMS on ``sample`` (source states), with ``cfg.row_steps`` also by each output dimension's
    RMS of the map's outputs on it, and step sizes relative to each parameter's scale."""
    if cfg.lr is not None:
        return torch.optim.Adam(module.parameters(), lr=cfg.lr)
    x = sample.float()
    out = None
    if cfg.row_steps:
        with torch.no_grad():
            rms = module(x).square().mean(dim=0).sqrt()
        out = rms.clamp_min(1e-6 * float(rms.max()) + 1e-12)
    module.precondition(x.square().mean(dim=0).sqrt().clamp_min(1e-6), out)
    return torch.optim.Adam(step_sizes(module, x, cfg.lr_rel))


@dataclass
class TrainConfig:
    lr: float | None = None  # one Adam step size for every parameter; None: ``lr_rel`` times each one's own scale
    lr_rel: float = 0.015
    batch_size: int = 4
    max_epochs: float = 3.0
    max_minutes: float = 40.0
    eval_every: int = 50
    patience: int = 4
    hidden_weight: float = 0.1
    anchor: float = 0.0
    ema: float = 0.0  # 0: the trained parameters themselves; else their moving average with this decay per step
    backoff: float = 0.5  # on a held-out evaluation no better than the best: back to the best state, steps × this
    row_steps: bool = True  # step sizes per output dimension (``make_optimizer``), not one per weight tensor
    top_k: int = 64
    heldout_probes: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            (self.lr is not None and self.lr <= 0)
            or self.lr_rel <= 0
            or self.batch_size < 1
            or self.max_epochs <= 0
            or self.max_minutes <= 0
        ):
            raise ValueError("lr, lr_rel, max_epochs and max_minutes must be > 0 and batch_size >= 1")
        if self.eval_every < 1 or self.patience < 1 or self.top_k < 1 or self.heldout_probes < 1:
            raise ValueError("eval_every, patience, top_k and heldout_probes must be >= 1")
        if self.anchor < 0 or self.hidden_weight < 0:
            raise ValueError("anchor and hidden_weight must be >= 0")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0 = no averaging), got {self.ema}")
        if not 0 < self.backoff <= 1:
            raise ValueError(f"backoff must be in (0, 1] (1 = never go back), got {self.backoff}")


@dataclass
class Teacher:
    """Per probe: top-k log-probs (n, k), their token ids (n, k), final normed hidden states (n, d)."""

    logprobs: list[torch.Tensor]
    ids: list[torch.Tensor]
    hidden: list[torch.Tensor]


def _teacher_key(target: LoadedModel, texts: list[str], probes: list[Probe], top_k: int) -> str:
    payload = json.dumps([texts, [(p.passage, p.cut, p.ids) for p in probes], top_k])
    return f"{target.fingerprint}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


@torch.no_grad()
def compute_teacher(
    target: LoadedModel,
    texts: list[str],
    probes: list[Probe],
    top_k: int,
    cache: Path | None = None,
    batch_size: int = 8,
) -> Teacher:
    """The target's own behaviour on every probe after reading its passage natively (cached under ``cache``)."""
    path = None if cache is None else cache / "teacher" / f"{_teacher_key(target, texts, probes, top_k)}.safetensors"
    if path is not None and path.exists():
        t = load_file(str(path))
        splits = t["lengths"].tolist()
        return Teacher(
            list(t["logprobs"].split(splits)), list(t["ids"].split(splits)), list(t["hidden"].float().split(splits))
        )
    lps, ids, hidden = [], [], []
    for start in tqdm(range(0, len(probes), batch_size), desc=f"teacher {target.name}", unit="batch", leave=False):
        chunk = probes[start : start + batch_size]
        prompts = [Prompt(NATIVE, p.ids, prefix_ids=target.tokenize(texts[p.passage][: p.cut])[0]) for p in chunk]
        prefill = Prefill(target, prompts)
        prefill.run()
        for tail in prefill.tails:
            h = tail[:-1]  # position t predicts probe token t
            top = torch.log_softmax(target.stack.logits(h), dim=-1).topk(top_k, dim=-1)
            lps.append(top.values.cpu())
            ids.append(top.indices.cpu())
            hidden.append(target.stack.norm(h).float().cpu())
    teacher = Teacher(lps, ids, hidden)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(
            {
                "logprobs": torch.cat(lps),
                "ids": torch.cat(ids),
                "hidden": torch.cat(hidden).to(torch.float16),
                "lengths": torch.tensor([len(x) for x in lps]),
            },
            str(tmp),
        )
        tmp.replace(path)
    return teacher


def topk_kl(t_logprobs: torch.Tensor, t_ids: torch.Tensor, s_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per position over the teacher's top-k tokens plus one bin for all others: (n,)."""
    p = t_logprobs.exp()
    s_top = s_logprobs.gather(-1, t_ids)
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    s_rest = torch.log1p(-s_top.exp().sum(-1).clamp(max=1 - 1e-6))
    rest = torch.where(p_rest > 0, p_rest * (torch.log(p_rest.clamp_min(1e-12)) - s_rest), torch.zeros_like(p_rest))
    return (p * (t_logprobs - s_top)).sum(-1) + rest


def source_states(encoded: Encoded, layer: int | tuple[int, ...], cut: int) -> torch.Tensor:
    """The source's states at ``layer`` (or several layers concatenated) of the tokens inside the first ``cut``
    characters (n, d) float32."""
    n = sum(1 for _, end in encoded.offsets if end <= cut)
    return encoded.at(layer)[:n].float()


@dataclass
class Through:
    """Everything needed to train or score maps of one direction through the target."""

    target: LoadedModel
    texts: list[str]
    probes: list[Probe]
    teacher: Teacher
    train_idx: list[int]  # probe indices
    held_idx: list[int]
    config: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def build(
        cls,
        target: LoadedModel,
        texts: list[str],
        probes: list[Probe],
        held_passages: set[int],
        config: TrainConfig,
        cache: Path | None,
    ) -> Through:
        if not probes:
            raise ValueError("no probes to train or score maps with (passages too short, or no probe kinds apply)")
        train = [i for i, p in enumerate(probes) if p.passage not in held_passages]
        held = [i for i, p in enumerate(probes) if p.passage in held_passages]
        if not train or not held:
            raise ValueError(
                f"need probes on both sides of the passage split, got {len(train)} for training and {len(held)} "
                "held out: use more passages"
            )
        return cls._taught(target, texts, probes, train, held, config, cache)

    @classmethod
    def held_out(
        cls, target: LoadedModel, texts: list[str], probes: list[Probe], config: TrainConfig, cache: Path | None
    ) -> Through:
        """Probes that only score maps, never train them: every probe held out (``heldout_probes`` of them, drawn
        with ``seed``), e.g. on passages of another source than the calibration text."""
        if not probes:
            raise ValueError("no probes on the held-out source's passages (too short, or no probe kinds apply)")
        return cls._taught(target, texts, probes, [], list(range(len(probes))), config, cache)

    @classmethod
    def _taught(
        cls,
        target: LoadedModel,
        texts: list[str],
        probes: list[Probe],
        train: list[int],
        held: list[int],
        config: TrainConfig,
        cache: Path | None,
    ) -> Through:
        """The target's behaviour on the probes (``compute_teacher``, cached), with ``heldout_probes`` of the held
        probe indices drawn with ``seed`` for scoring."""
        teacher = compute_teacher(target, texts, probes, config.top_k, cache)
        held = list(held)
        random.Random(config.seed).shuffle(held)
        return cls(target, texts, probes, teacher, train, held[: config.heldout_probes], config)

    def loss(
        self, map_fn: Any, encoded: list[Encoded], ls: int | tuple[int, ...], lt: int, idx: list[int], grad: bool
    ) -> tuple[torch.Tensor, float]:
        """(total loss, mean KL) of the probes ``idx`` with the map ``map_fn`` from source layer ``ls`` into ``lt``."""
        target, stack = self.target, self.target.stack
        prompts, used = [], []
        with torch.set_grad_enabled(grad):
            for i in idx:
                p = self.probes[i]
                states = source_states(encoded[p.passage], ls, p.cut)
                if states.shape[0] == 0:
                    continue
                mapped = map_fn(states.to(stack.device)).to(stack.dtype)
                prompts.append(Prompt(default_mode(lt), p.ids, layer=lt, states=mapped))
                used.append(i)
            if not prompts:
                return torch.zeros((), requires_grad=grad), 0.0
            prefill = Prefill(target, prompts, grad=grad)
            prefill.run()
            kls, hids = [], []
            for tail, i in zip(prefill.tails, used, strict=True):
                h = tail[:-1]
                s_logprobs = torch.log_softmax(stack.logits(h, grad=grad), dim=-1)
                t_lp, t_ids = self.teacher.logprobs[i].to(h.device), self.teacher.ids[i].to(h.device)
                kls.append(topk_kl(t_lp, t_ids, s_logprobs))
                t_h = self.teacher.hidden[i].to(h.device)
                hids.append((stack.norm(h).float() - t_h).square().sum(-1) / t_h.square().sum(-1).mean())
            kl = torch.cat(kls).mean()
            total = kl + self.config.hidden_weight * torch.cat(hids).mean()
        return total, float(kl.detach())

    @torch.no_grad()
    def score(
        self, aligner: Aligner, encoded: list[Encoded], ls: int | tuple[int, ...], lt: int, snap: float = 0.0
    ) -> float:
        """Mean held-out KL of the target reading the probes after this map's handover (lower is better), with the
        mapped states moved ``snap`` of the way to the target's nearest embedding rows (``toward_vocabulary``; a map
        into a deeper layer moves by its readout's, ``Aligner.readout``)."""

        def map_fn(x: torch.Tensor) -> torch.Tensor:
            tokens = aligner.read_tokens(x) if lt and snap else None
            return toward_vocabulary(self.target, aligner.transform(x), snap, tokens=tokens)

        with frozen(self.target.model):
            return self.held_kl(map_fn, encoded, ls, lt)

    def choose_snap(
        self,
        aligner: Aligner,
        encoded: list[Encoded],
        ls: int | tuple[int, ...],
        weights: list[float],
        kl0: float,
        lt: int = 0,
    ) -> tuple[float, dict[float, float]]:
        """The snap weight among ``weights`` with the lowest held-out KL for a map into layer ``lt`` (the target's
        input embeddings, or a deeper layer with a readout into them), and every weight's KL (``kl0``: the map's own
        KL, without a snap)."""
        kls = {w: kl0 if w == 0.0 else self.score(aligner, encoded, ls, lt, w) for w in weights}
        return best_first("kl", sorted((kl, w) for w, kl in kls.items()))[0][1], kls

    def step_seconds(
        self, aligner: Distill, encoded: list[Encoded], ls: int | tuple[int, ...], lt: int, steps: int = 2
    ) -> float:
        """Seconds one training step of this map takes here: the loss and its gradients on one batch (the optimizer's
        update is small beside them), the mean of ``steps`` steps after a warm-up step, on a copy of the map."""
        module = aligner.module().to(self.target.stack.device)
        batch = self.train_idx[: self.config.batch_size]
        times = []
        with frozen(self.target.model):
            for _ in range(steps + 1):
                start = time.perf_counter()
                loss, _ = self.loss(module, encoded, ls, lt, batch, grad=True)
                loss.backward()
                times.append(time.perf_counter() - start)
        return sum(times[1:]) / steps

    def vocabulary(self) -> torch.Tensor:
        """The token ids the target cuts the calibration texts into (sorted, unique)."""
        ids = {i for text in self.texts for i in self.target.tokenize(text)[0]}
        return torch.tensor(sorted(ids), dtype=torch.long)

    def held_kl(self, map_fn: Any, encoded: list[Encoded], ls: int | tuple[int, ...], lt: int) -> float:
        step = max(1, self.config.batch_size * 2)
        kls = [
            (
                self.loss(map_fn, encoded, ls, lt, self.held_idx[s : s + step], grad=False)[1],
                len(self.held_idx[s : s + step]),
            )
            for s in range(0, len(self.held_idx), step)
        ]
        return sum(k * n for k, n in kls) / max(1, sum(n for _, n in kls))

    def train(
        self,
        aligner: Distill,
        encoded: list[Encoded],
        ls: int | tuple[int, ...],
        lt: int,
        label: str = "",
        snap: float = 0.0,
        held_out: Callable[[Any], float] | None = None,
    ) -> dict[str, Any]:
        """Train ``aligner`` (already fitted: its least-squares init) through the target, for a map into layer 0 as
        served with the snap weight ``snap``; installs the best held-out state and returns the learning curve and
        timings (``heldout_kl`` with that snap). ``held_out`` scores a map function on held-out probes (default: this
        trainer's own, ``held_kl``): it picks the state kept and when to stop."""
        if not 0 <= snap < 1:
            raise ValueError(f"a snap weight to train through must be in [0, 1) (at 1 no gradient passes), got {snap}")
        cfg = self.config
        module: MapModule = aligner.module().to(self.target.stack.device)
        weight = snap if lt == 0 else 0.0
        candidates = self.vocabulary() if weight else None

        def served(m: MapModule) -> Any:  # the map as the target will read it
            if not weight:
                return m
            return lambda x: toward_vocabulary(self.target, m(x), weight, candidates)

        passages = sorted({self.probes[i].passage for i in self.train_idx})[:16]  # the training probes' passages
        sample = torch.cat([encoded[i].at(ls) for i in passages]).to(module.weight.device)
        optimizer = make_optimizer(module, sample, cfg)
        w0 = module.weight.detach().clone()  # as trained (preconditioned or not)
        w0_norm = float(w0.square().sum())
        rng = random.Random(cfg.seed)
        max_steps = max(1, math.ceil(cfg.max_epochs * len(self.train_idx) / cfg.batch_size))
        curve: list[dict[str, float]] = []
        started = time.perf_counter()
        scored = copy.deepcopy(module) if cfg.ema else module  # the map that is scored, kept and installed

        def held_score(fn: Any) -> float:
            return held_out(fn) if held_out is not None else self.held_kl(fn, encoded, ls, lt)

        with frozen(self.target.model):
            best = held_score(served(scored))
            curve.append({"step": 0, "heldout_kl": best, "train_kl": float("nan"), "seconds": 0.0})
            best_raw = _raw(scored)
            stale, step = 0, 0
            order: list[int] = []
            bar = tqdm(total=max_steps, desc=f"distill {label}".strip(), unit="step", leave=False)
            running: list[float] = []
            while step < max_steps:
                if not order:
                    order = list(self.train_idx)
                    rng.shuffle(order)
                batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
                loss, kl = self.loss(served(module), encoded, ls, lt, batch, grad=True)
                if cfg.anchor:
                    loss = loss + cfg.anchor * (module.weight - w0).square().sum() / w0_norm
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if cfg.ema:
                    with torch.no_grad():
                        for average, trained in zip(scored.parameters(), module.parameters(), strict=True):
                            average.lerp_(trained, 1 - cfg.ema)
                step += 1
                running.append(kl)
                bar.update(1)
                out_of_time = time.perf_counter() - started > cfg.max_minutes * 60
                if step % cfg.eval_every == 0 or step == max_steps or out_of_time:
                    held = held_score(served(scored))
                    train_kl = sum(running) / len(running)
                    running = []
                    curve.append(
                        {
                            "step": step,
                            "heldout_kl": held,
                            "train_kl": train_kl,
                            "seconds": time.perf_counter() - started,
                        }
                    )
                    bar.set_postfix_str(f"train KL {train_kl:.3f} held-out KL {held:.3f} (best {min(best, held):.3f})")
                    if held < best:
                        best, best_raw, stale = held, _raw(scored), 0
                    else:
                        stale += 1
                        if cfg.backoff < 1:
                            _back_to(best_raw, module, scored, optimizer, cfg.backoff)
                    if stale >= cfg.patience or out_of_time:
                        break
            bar.close()
        seconds = time.perf_counter() - started
        best_step = min(curve, key=lambda c: c["heldout_kl"])["step"]
        aligner.set_module(
            MapModule.from_tensors(_installed(scored, best_raw), aligner.hidden),
            {
                "train_steps": float(step),
                "best_step": float(best_step),
                "heldout_kl": best,
                "train_seconds": seconds,
                "train_snap": weight,
            },
        )
        return {"curve": curve, "steps": step, "best_step": best_step, "heldout_kl": best, "seconds": seconds}
