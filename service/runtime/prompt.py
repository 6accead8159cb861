"""What the target model receives for one request (``Prompt``), and the padding helpers batches are built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from service.runtime.modes import HandoverMode

LastTokenOp = Literal["replace", "sum", "mean"]


@dataclass
class Prompt:
    """What the target model receives for one request, and the handover mode that builds and prefills it."""

    mode: HandoverMode
    suffix_ids: list[int] = field(default_factory=list)
    layer: int = 0
    prefix_ids: list[int] | None = None  # native: B's own tokens of the text
    states: torch.Tensor | None = None  # replace/full/embeds: (n, d_B) states entering at `layer`
    layer_states: dict[int, torch.Tensor] | None = None  # full: k -> (n, d_B) input of block k+1, for k < layer
    last_state: torch.Tensor | None = None  # last_token: (d_B,)
    op: LastTokenOp = "replace"

    @property
    def prefix_len(self) -> int:
        """Positions before the suffix: the text's own tokens (native) or the handed-over states."""
        return self.mode.prefix_len(self)


def pad_ids(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows to (B, T) ids and validity."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        valid[i, : len(r)] = True
    return ids.to(device), valid.to(device)


def pad_states(rows: list[torch.Tensor], d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Right-pad (n_i, d) state rows to (B, max n, d)."""
    width = max((r.shape[0] for r in rows), default=0)
    out = torch.zeros(len(rows), width, d, dtype=dtype, device=device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r.to(device=device, dtype=dtype)
    return out


def positions(starts: list[int], valid: torch.Tensor) -> torch.Tensor:
    """Absolute positions start_i + t for every slot t (padding slots get a harmless in-range value)."""
    t = torch.arange(valid.shape[1], device=valid.device)
    return torch.tensor(starts, device=valid.device)[:, None] + t[None, :]
