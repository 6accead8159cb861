"""Parsing layer lists such as ``8-16`` or ``2,4,8-12``."""

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
