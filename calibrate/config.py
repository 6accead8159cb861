"""What ``fit`` and ``evaluate`` take: one dataclass each, its defaults and its checks in one place.

The CLI builds these from its flags (its defaults are read from here), Python code builds them directly:

    FitConfig(source="smollm2", target="gemma3", out="maps", samples=300, methods=("linear", "distill"))

List-valued options take a sequence or the CLI's comma-separated text. A value out of range raises ``ConfigError``,
which names the option (``ConfigError.option``) so that each caller can say it in its own words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from calibrate.layers import AUTO, parse_layer_groups, parse_layers, parse_snaps, parse_train_snap
from calibrate.probes import PROBE_KINDS
from calibrate.sweep import METHODS, PAIRINGS, Group, SweepOptions
from calibrate.trainer import TrainConfig
from service.runtime.convert import cache_home
from service.runtime.handover import GRIDS
from service.runtime.modes import HandoverMode, get_mode, parse_handover_modes

# What the measurements favour (docs/results/translation-quality.md): trained maps beat least squares in every mode;
# affine least squares is level with linear everywhere measured, so only linear (the trained map's start) is fitted.
DEFAULT_METHODS = ("linear", "distill")
DEFAULT_PROBES = ("continuation", "repeat", "qa")
DEFAULT_DATA = "builtin:fictional-qa,builtin:python-docs"  # QA passages and real prose: varied text
DEFAULT_SNAPS = (0.0, 0.25, 0.5, 0.75)  # candidate snap weights `fit` chooses among by the proxy (1 never won)
# Passages the models make themselves (``data`` may name them as sampled:N, vocab:N), and how many by default.
MADE_DEFAULTS = {"sampled": 400, "vocab": 0}
DEFAULT_EVAL_MODES = ("replace", "full", "last_token", "embeds")
SCREEN_BY = ("auto", "f1", "kl", "kl_xsrc", "proxy")
# What ranks maps: kl (held-out probes of the calibration text) or kl_xsrc (probes on passages of ``proxy_data``);
# auto: kl_xsrc where there is a ``proxy_data``, else kl.
RANK_BY = ("auto", "kl", "kl_xsrc")
# The source the default proxy scores maps on: docstrings of standard-library modules, a source neither the default
# calibration data nor the project's evaluation text (stdlib-docs: other modules) uses.
DEFAULT_PROXY_DATA = "builtin:module-docs"


class ConfigError(ValueError):
    """An option with a value it cannot take; ``option`` is the field's name."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option} {problem}")
        self.option = option
        self.problem = problem


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """Comma-separated text or a sequence -> a tuple of stripped, non-empty names."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(p.strip() for p in parts if p.strip())


def _check(config: Any, rule: str, names: Sequence[str]) -> None:
    """Refuse any of ``names`` whose value breaks ``rule`` (">= 1", ">= 0", "> 0", "in [0, 1)", "in (0, 1]")."""
    tests = {
        ">= 1": lambda v: v >= 1,
        ">= 0": lambda v: v >= 0,
        "> 0": lambda v: v > 0 and math.isfinite(v),
        "in [0, 1)": lambda v: 0 <= v < 1,
        "in (0, 1]": lambda v: 0 < v <= 1,
    }
    for name in names:
        if not tests[rule](getattr(config, name)):
            raise ConfigError(name, f"must be {rule}, got {getattr(config, name)!r}")


def _choices(config: Any, name: str, allowed: Sequence[str]) -> None:
    values = getattr(config, name)
    bad = [v for v in (values if isinstance(values, tuple) else (values,)) if v not in allowed]
    if bad:
        raise ConfigError(name, f"has unknown {', '.join(map(str, bad))}; choose from {', '.join(allowed)}")


def _parsed(name: str, parse: Any, *args: Any) -> Any:
    """``parse(*args)``, its ValueError raised again as the option's ``ConfigError``."""
    try:
        return parse(*args)
    except ValueError as err:
        problem = str(err)
        for prefix in (f"--{name.replace('_', '-')} ", f"{name} "):
            problem = problem.removeprefix(prefix)
        raise ConfigError(name, problem) from None


def _snap_weights(value: tuple[float, ...] | str) -> tuple[float, ...]:
    """Snap weights from text (``0,0.5,1``) or a sequence, each in [0, 1]."""
    weights = _parsed("snap", parse_snaps, value, "--snap") if isinstance(value, str) else tuple(map(float, value))
    if not weights or any(not 0 <= w <= 1 for w in weights):
        raise ConfigError("snap", f"takes weights in [0, 1] (e.g. 0,0.5,1), got {weights}")
    return weights


def _layer_list(value: str | None) -> list[int] | None:
    """``target_layers`` parsed (``8-16``, ``2,4``); None where none are named."""
    return None if value is None else _parsed("target_layers", parse_layers, value)


@dataclass(kw_only=True)
class ModelOptions:
    """How both models are loaded, where cached states go, and the seed of every split and draw."""

    dtype: str = "float32"
    device: str = "cpu"
    cache: Path = field(default_factory=lambda: cache_home() / "cache")
    seed: int = 0

    def __post_init__(self) -> None:
        self.cache = Path(self.cache)
        _choices(self, "dtype", ("float32", "bfloat16", "float16"))


@dataclass(kw_only=True)
class FitConfig(ModelOptions):
    """Everything ``calibrate.fit`` does: which models, which text, which maps, how they are trained and ranked."""

    source: str
    target: str
    out: Path = Path("maps")
    data: str = DEFAULT_DATA
    samples: int = 1000
    sampled: int | None = None  # None: what ``data`` names (sampled:N), else MADE_DEFAULTS
    vocab: int | None = None
    eval_samples: int = 200
    snap: tuple[float, ...] | str = DEFAULT_SNAPS
    pairing: str = "auto"
    layers: str = "2,4,0+2,0+4"
    target_layers: str | None = None
    methods: tuple[str, ...] | str = DEFAULT_METHODS
    directions: str = "both"
    full: bool = False
    probes: tuple[str, ...] | str = DEFAULT_PROBES
    probe_tokens: int = 32
    probes_per_passage: int = 1
    proxy_probes: int = 48
    proxy_data: str | None = DEFAULT_PROXY_DATA  # None or "none": no proxy on another source
    proxy_samples: int = 32
    both_proxies: bool = False
    rank_by: str = "auto"
    train_top: int = 1
    lr: float | None = None
    lr_rel: float | None = None  # None (with lr None): searched (``calibrate.search.LR_RELS``)
    train_batch: int = 4
    train_epochs: float = 3.0
    train_minutes: float | None = None  # None: an equal share of what ``budget`` leaves for training
    budget: float = 45.0  # minutes per direction: probes, screening, pilots and training
    anchor: float | None = None  # None: searched (``calibrate.search``)
    ema: float = TrainConfig.ema
    backoff: float = TrainConfig.backoff
    row_steps: bool = TrainConfig.row_steps
    train_snap: float | str = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out = Path(self.out)
        self.data = self._passages_the_models_make()
        self.methods = _names(self.methods)
        self.probes = _names(self.probes)
        self.snap = _snap_weights(self.snap)
        if isinstance(self.train_snap, str) and self.train_snap != AUTO:
            self.train_snap = _parsed("train_snap", parse_train_snap, self.train_snap)
        if not isinstance(self.train_snap, str) and not 0 <= self.train_snap < 1:
            raise ConfigError("train_snap", f"takes {AUTO!r} or a weight in [0, 1) (at 1 no gradient passes)")
        _check(self, ">= 1", ("samples", "eval_samples", "probe_tokens", "probes_per_passage", "proxy_samples"))
        _check(self, ">= 1", ("train_top", "train_batch"))
        _check(self, ">= 0", ("sampled", "vocab", "proxy_probes"))
        _check(self, "> 0", ("train_epochs", "budget"))
        for name, rule in (("anchor", ">= 0"), ("train_minutes", "> 0"), ("lr_rel", "> 0")):
            if getattr(self, name) is not None:
                _check(self, rule, (name,))
        _check(self, "in [0, 1)", ("ema",))
        _check(self, "in (0, 1]", ("backoff",))
        if self.lr is not None:
            _check(self, "> 0", ("lr",))
        _choices(self, "methods", list(METHODS))
        if not self.methods:
            raise ConfigError("methods", f"names no method; choose from {', '.join(METHODS)}")
        _choices(self, "probes", PROBE_KINDS)
        _choices(self, "pairing", PAIRINGS)
        _choices(self, "directions", ("both", "forward"))
        _choices(self, "rank_by", RANK_BY)
        if self.proxy_data is not None and self.proxy_data.strip().lower() in ("", "none"):
            self.proxy_data = None
        if self.rank_by == "kl_xsrc" and self.proxy_data is None:
            raise ConfigError("rank_by", "kl_xsrc ranks by probes on another source: name it with proxy_data")
        if self.proxy_data == DEFAULT_PROXY_DATA and self.proxy_probes < 1:
            self.proxy_data = None  # no probes: nothing is scored, on any source
        if self.proxy_data is not None and self.proxy_probes < 1:
            raise ConfigError("proxy_data", "scores maps by probes: proxy_probes must be >= 1")
        self.source_groups()
        self.target_layer_list()

    def _passages_the_models_make(self) -> str:
        """Take ``sampled:N`` and ``vocab:N`` out of ``data`` into ``sampled`` and ``vocab`` (the same as setting
        those; setting both is refused); returns the rest of ``data``, the sources that are read."""
        read, named = [], {}
        for part in _names(self.data):
            kind, sep, count = part.partition(":")
            if kind in MADE_DEFAULTS and sep:
                if not count.isdigit():
                    raise ConfigError("data", f"{part!r}: {kind}:N takes a number of passages")
                named[kind] = int(count)
            else:
                read.append(part)
        for kind, fallback in MADE_DEFAULTS.items():
            if kind in named and getattr(self, kind) is not None:
                raise ConfigError(kind, f"is given twice: as {kind}={getattr(self, kind)} and as {kind}: in data")
            if getattr(self, kind) is None:
                setattr(self, kind, named.get(kind, fallback))
        if not read and not self.sampled and not self.vocab:
            raise ConfigError("data", "names no passages to calibrate on")
        return ",".join(read)

    def source_groups(self) -> list[Group]:
        """``layers`` parsed: one group of source layers per map (``0+2``: layers 0 and 2 concatenated)."""
        return list(_parsed("layers", parse_layer_groups, self.layers))

    def target_layer_list(self) -> list[int] | None:
        """``target_layers`` parsed; None: for each group, layer 0 and the same relative depth."""
        return _layer_list(self.target_layers)

    @property
    def snaps(self) -> tuple[float, ...]:
        assert isinstance(self.snap, tuple)
        return self.snap

    @property
    def ranking(self) -> str:
        """The proxy that ranks maps: ``rank_by``, with ``auto`` resolved."""
        if self.rank_by != "auto":
            return self.rank_by
        return "kl_xsrc" if self.proxy_data is not None else "kl"

    def sweep_options(self) -> SweepOptions:
        assert isinstance(self.methods, tuple)
        return SweepOptions(
            self.methods,
            self.seed,
            self.train_top,
            self.pairing,
            self.snaps,
            self.train_snap,
            self.ranking,
            lr=self.lr,
            lr_rel=self.lr_rel,
            anchor=self.anchor,
            train_minutes=self.train_minutes,
            both_proxies=self.both_proxies,
        )


@dataclass(kw_only=True)
class EvalConfig(ModelOptions):
    """Everything ``calibrate.evaluate`` does: which store, which items and text, which maps and modes."""

    maps: Path
    data: str | None = None
    samples: int = 100
    modes: tuple[str, ...] | str = DEFAULT_EVAL_MODES
    screen_items: int = 16
    target_layers: str | None = None
    screen_by: str = "auto"
    text_data: str | None = None
    text_samples: int = 60
    pairs: tuple[str, ...] | str | None = None
    methods: tuple[str, ...] | str | None = None
    grids: tuple[str, ...] | str = ("source",)
    snap: tuple[float, ...] | str | None = None
    chat: bool = False
    source_answers: bool = True
    max_new_tokens: int = 12
    batch_size: int = 16
    out: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.maps = Path(self.maps)
        self.out = Path(self.out) if self.out is not None else None
        self.modes = tuple(_parsed("modes", parse_handover_modes, ",".join(_names(self.modes))))
        if not self.modes:
            raise ConfigError("modes", "names no handover mode")
        self.grids = _names(self.grids)
        if not self.grids:
            raise ConfigError("grids", f"takes a comma-separated list of {', '.join(GRIDS)}")
        _choices(self, "grids", GRIDS)
        self.pairs = None if self.pairs is None else _names(self.pairs)
        self.methods = None if self.methods is None else _names(self.methods)
        self.snap = None if self.snap is None else _snap_weights(self.snap)
        _choices(self, "screen_by", SCREEN_BY)
        _check(self, ">= 1", ("samples", "screen_items", "text_samples", "max_new_tokens", "batch_size"))
        self.target_layer_list()

    def target_layer_list(self) -> list[int] | None:
        """``target_layers`` parsed: screen only maps into these; None: every map."""
        return _layer_list(self.target_layers)

    def handover_modes(self) -> list[HandoverMode]:
        """``modes`` as the mode objects (parsed from their names here, where the option comes in)."""
        assert isinstance(self.modes, tuple)
        return [get_mode(m) for m in self.modes]

    def snap_rows(self) -> tuple[float | None, ...]:
        """The snap weights scored, one row each; (None,): each map's own."""
        assert not isinstance(self.snap, str)  # parsed in __post_init__
        return (None,) if self.snap is None else self.snap


def default(config: type, name: str) -> Any:
    """The default of one option (what the CLI shows and uses)."""
    for f in fields(config):
        if f.name == name:
            return f.default_factory() if callable(f.default_factory) else f.default
    raise KeyError(name)
