"""Calibration text sampled from the models themselves: any pair can make it offline, with no corpus at hand.

Each model writes passages from its start token alone (temperature 1, top-p 0.95, one seed per passage), so the
text follows what the model has seen in training (prose, code, markup, other languages) instead of one generator's
templates. Passages are cut after their last sentence end (or last line) to at most ``MAX_CHARS`` and kept from
``MIN_CHARS`` up, so they match the other plain-text sources. Sampling is deterministic for a model and seed on one
machine, and cached as JSON under ``<cache>/samples/``.
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from calibrate.cache import cached_json
from calibrate.sources.item import Item
from calibrate.sources.prose import MAX_CHARS, MIN_CHARS
from service.runtime.generate import SamplingParams, generate
from service.runtime.loading import LoadedModel
from service.runtime.modes import NATIVE
from service.runtime.prompt import Prompt

SAMPLE_TOKENS = 160  # about 600 characters of English
TEMPERATURE, TOP_P = 1.0, 0.95


def trim(text: str) -> str | None:
    """A sampled text as a passage: at most MAX_CHARS, ending at a sentence end (or a line end) where one is past
    MIN_CHARS; None when too little text is left."""
    text = text.strip()[:MAX_CHARS]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)|\n", text) if m.end() >= MIN_CHARS]
    text = text[: ends[-1]].strip() if ends else text
    return text if len(text) >= MIN_CHARS else None


def sample_passages(
    model: LoadedModel,
    n: int,
    seed: int = 0,
    cache: Path | None = None,
    tokens: int = SAMPLE_TOKENS,
    batch_size: int = 16,
) -> list[Item]:
    """``n`` passages sampled from ``model``, ``tokens`` new tokens each, passage ``i`` with its own seed
    ``seed * 1_000_003 + i`` (fewer come back where samples are too short to keep)."""
    if n < 0:
        raise ValueError(f"the number of sampled passages must be >= 0, got {n}")

    def sample() -> list[str]:
        texts: list[str] = []
        for start in tqdm(range(0, n, batch_size), desc=f"sample {model.name}", unit="batch", leave=False):
            count = min(batch_size, n - start)
            params = [
                SamplingParams(max_new_tokens=tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=seed * 1_000_003 + i)
                for i in range(start, start + count)
            ]
            outs = generate(model, [Prompt(NATIVE, [], prefix_ids=[]) for _ in range(count)], params)
            texts.extend(out.text for out in outs)
        return texts

    key = [n, seed, tokens, TEMPERATURE, TOP_P, batch_size]
    texts = cached_json(cache, "samples", model.fingerprint, key, sample)
    kept = [(i, t) for i, t in enumerate(trim(t) for t in texts) if t is not None]
    return [Item(id=f"sampled-{model.name}-{i}", context=t, title=f"sampled:{model.name}") for i, t in kept]
