"""Parsing layer lists such as ``8-16`` or ``2,4,8-12``, and lists of snap weights."""

from __future__ import annotations


def parse_layers(text: str) -> list[int]:
    """``"8-16"`` -> [8, ..., 16]; ``"2,4,8-10"`` -> [2, 4, 8, 9, 10]. Raises ValueError on anything else."""
    layers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if a > b:
                    raise ValueError
                layers.update(range(a, b + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise ValueError(f"bad layer list {text!r}: use numbers and ranges like 8-16 or 2,4,8-12") from None
    if any(layer < 0 for layer in layers):
        raise ValueError(f"bad layer list {text!r}: layers are >= 0")
    return sorted(layers)


def parse_layer_groups(text: str) -> list[tuple[int, ...]]:
    """Source layers, where ``A+B`` concatenates the states of layers A and B per token into one map's input:
    ``"2,4,0+2"`` -> [(2,), (4,), (0, 2)]; ranges as in ``parse_layers`` give one layer each."""
    groups: list[tuple[int, ...]] = []
    for part in text.split(","):
        if "+" in part:
            layers = [parse_layers(p) for p in part.split("+")]
            if any(len(one) != 1 for one in layers) or len({one[0] for one in layers}) != len(layers):
                raise ValueError(f"bad layer group {part.strip()!r}: join distinct single layers with +, like 0+2")
            group: list[tuple[int, ...]] = [tuple(sorted(one[0] for one in layers))]
        else:
            group = [(layer,) for layer in parse_layers(part)]
        groups.extend(g for g in group if g not in groups)
    return groups


def check_range(layers: list[int], n_layers: int, model: str, what: str, allow_last: bool = True) -> None:
    top = n_layers if allow_last else n_layers - 1
    bad = [layer for layer in layers if layer > top]
    if bad:
        why = (
            f"it has layers 0..{n_layers} (0 = embeddings, {n_layers} = after the last of its {n_layers} blocks)"
            if allow_last
            else f"states are injected at layers 0..{top}: layer {n_layers} is the output of its last block "
            "(after the final norm), which no block reads"
        )
        raise ValueError(f"{what} {bad} out of range for {model}: {why}")


def parse_snaps(text: str, flag: str) -> tuple[float, ...]:
    """Comma-separated snap weights, each a share in [0, 1]."""
    try:
        weights = tuple(float(w) for w in text.split(",") if w.strip())
    except ValueError:
        weights = ()
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"{flag} takes comma-separated weights in [0, 1] (e.g. 0,0.5,1), got {text!r}")
    return weights


# ``fit --train-snap`` value: train through the snap weight chosen for the map's least-squares start.
AUTO = "auto"


def parse_train_snap(text: str) -> float | str:
    """``auto`` or one snap weight in [0, 1) to train maps into layer 0 through."""
    if text.strip() == AUTO:
        return AUTO
    try:
        weight = float(text)
    except ValueError:
        weight = -1.0
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"--train-snap takes {AUTO!r} or a weight in [0, 1) (at 1 no gradient passes), got {text!r}")
    return weight
