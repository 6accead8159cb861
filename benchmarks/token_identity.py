"""How much token identity a least-squares map carries into the target's input embeddings, per source layer.

For each source layer (or several concatenated per token: ``0+2``), a least-squares map (``linear``, ridge chosen on
a held-out split) is fitted from the source's states to the target's input embeddings of the paired tokens
(``calibrate.sweep.gather``'s pairing) on N calibration passages. Each mapped state is then decoded to the nearest row
of the target's embedding matrix (as the target reads it, scaled); top-1 is the share of paired tokens whose nearest
row is the very token the target reads there. Measured on held-out items of the calibration source and on passages
from other sources, side by side in one run. In `embeds` mode a map that gets the tokens wrong cannot hand over
names and numbers, whatever else it carries.

    python benchmarks/token_identity.py --source smollm2 --target gemma3 --layers 0,2,4,8,12,0+2 --samples 300 \\
        --data builtin:fictional-qa,builtin:python-docs --other builtin:letters-qa --other builtin:stdlib-docs

``--vocab N`` adds N passages of vocabulary words (``calibrate.sources.vocab``, as ``fit --vocab``) to the fitted text.

Prints a Markdown table. With ``--grid-qa SPEC``, it first checks that the source's token grid itself costs nothing:
the target answers SPEC's questions reading the passages natively and reading them cut as the source cuts them (each
source token's text re-tokenised by the target, so the target sees one or more of its own tokens per source token).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from aligners import build
from calibrate.layers import parse_layer_groups
from calibrate.sources import read_items, shares, split_items
from calibrate.sweep import PAIRINGS, Side, gather
from service.runtime.encode import encode
from service.runtime.loading import LoadedModel, load_model


def side(model: LoadedModel, texts: list[str], layers: list[int]) -> Side:
    return Side(model.name, model, encode(model, texts, layers))


@torch.no_grad()
def top1(mapped: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, chunk: int = 512) -> float:
    """Share of rows whose nearest (L2) embedding row is the paired token."""
    hits = 0
    for s in range(0, len(mapped), chunk):
        hits += int((torch.cdist(mapped[s : s + chunk], table).argmin(1) == ids[s : s + chunk]).sum())
    return hits / max(1, len(mapped))


def paired_ids(src: Side, tgt: Side, pairing: str = "end") -> torch.Tensor:
    """The target token of every pair ``gather`` yields with ``pairing``, in the same order."""
    from service.runtime.pairing import pair_indices, piece_pairs

    out: list[int] = []
    for a, b in zip(src.encoded, tgt.encoded, strict=True):
        if pairing == "span":
            out.extend(piece_pairs(a.text, a.offsets, tgt.model.tokenize_pieces)[1])
            continue
        _, ti = pair_indices(a.offsets, b.offsets)
        out.extend(b.ids[j] for j in ti)
    return torch.tensor(out)


def grid_qa(src: LoadedModel, tgt: LoadedModel, spec: str, n: int) -> tuple[float, float, float]:
    """(native F1, F1 on the source's grid, share of source tokens that are one target token) on ``n`` QA items."""
    from calibrate.evaluation import qa_suffix
    from calibrate.scoring import f1_score, first_line
    from service.runtime.generate import SamplingParams, generate
    from service.runtime.modes import NATIVE
    from service.runtime.prompt import Prompt

    items = [it for it in read_items(spec, seed=0, builtin_size=2000) if it.has_qa][:n]
    single = total = 0
    f1s = []
    for grid in ("native", "source"):
        prompts = []
        for it in items:
            ids = tgt.tokenize(it.context)[0]
            if grid == "source":
                ids = []
                for start, end in src.tokenize(it.context)[1]:
                    piece = tgt.tokenize(it.context[start:end])[0]
                    single, total, ids = single + (len(piece) == 1), total + 1, ids + piece
            prompts.append(Prompt(NATIVE, tgt.tokenize(qa_suffix(it))[0], prefix_ids=ids))
        outs = generate(tgt, prompts, SamplingParams(max_new_tokens=12))
        f1s.append(sum(f1_score(first_line(o.text), it.answers) for it, o in zip(items, outs, strict=True)))
    return f1s[0] / len(items), f1s[1] / len(items), single / max(1, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2")
    parser.add_argument("--target", default="gemma3")
    parser.add_argument("--layers", default="0,2,4,8,12", help="source layers; A+B concatenates two")
    parser.add_argument("--data", default="builtin:fictional-qa,builtin:python-docs", help="calibration data")
    parser.add_argument("--samples", type=int, default=300, help="calibration passages")
    parser.add_argument("--other", action="append", default=[], help="another source to measure on (repeatable)")
    parser.add_argument("--vocab", type=int, default=0, help="also fit on N vocabulary passages (half per model)")
    parser.add_argument("--held", type=int, default=40, help="passages per evaluation set")
    parser.add_argument(
        "--pairing",
        choices=PAIRINGS,
        default="end",
        help="fit and score on tokens paired by common ends, or each source token with the target's own token for "
        "the same characters (as fit --pairing)",
    )
    parser.add_argument("--grid-qa", help="QA source for the token-grid check (e.g. builtin:letters-qa)")
    args = parser.parse_args()
    torch.manual_seed(0)
    groups = parse_layer_groups(args.layers)
    layers = sorted({layer for group in groups for layer in group})
    src_model, tgt_model = load_model(args.source, name=args.source), load_model(args.target, name=args.target)
    if args.grid_qa:
        native, grid, single = grid_qa(src_model, tgt_model, args.grid_qa, args.held)
        print(
            f"{args.target} answering {args.held} {args.grid_qa} items: F1 {native:.1f} reading natively, {grid:.1f} "
            f"on {args.source}'s token grid ({100 * single:.0f}% of its tokens are one {args.target} token)\n"
        )
    items = read_items(args.data, seed=0, builtin_size=args.samples + 200)
    calib, held = split_items(items, args.samples, args.held, 0)
    sets = {"calibration source, held out": [it.context for it in held]}
    for spec in args.other:
        sets[spec] = [it.context for it in read_items(spec, seed=0, builtin_size=2000)][: args.held]
    start = time.perf_counter()
    fit_texts = [it.context for it in calib]
    if args.vocab:
        from calibrate.sources.vocab import vocabulary_passages

        for model, share in zip((src_model, tgt_model), shares(args.vocab, 2), strict=True):
            fit_texts += [it.context for it in vocabulary_passages(model, share, seed=0)]
    fit_src, fit_tgt = side(src_model, fit_texts, layers), side(tgt_model, fit_texts, [0])
    evals = {name: (side(src_model, t, layers), side(tgt_model, t, [0])) for name, t in sets.items()}
    table = tgt_model.stack.embed(torch.arange(tgt_model.stack.embed_tokens.weight.shape[0])[None])[0].float()
    print(f"encoded in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    extra = f" + {args.vocab} vocabulary passages" if args.vocab else ""
    print(
        f"{args.source} -> {args.target} input embeddings, {len(fit_texts)} passages ({args.data}{extra}), "
        f"pairing {args.pairing}\n"
    )
    print("| source layer | pairs fitted | " + " | ".join(f"top-1: {n}" for n in sets) + " |")
    print("|---:|---:|" + "---:|" * len(sets))
    all_passages = list(range(len(fit_texts)))
    for group in groups:
        x, y = gather(fit_src, fit_tgt, all_passages, group, 0, args.pairing)
        aligner = build("linear", seed=0).fit(x, y)
        cells = []
        for s, t in evals.values():
            xe, _ = gather(s, t, list(range(len(s.encoded))), group, 0, args.pairing)
            cells.append(f"{top1(aligner.transform(xe), paired_ids(s, t, args.pairing), table):.3f}")
        print(f"| {'+'.join(map(str, group))} | {len(x)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
