"""Human-readable reports: Markdown tables for fits and evaluations, and heatmaps of the headline metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aligners.store import MapKey, layers_name


def _f(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _snap(row: dict[str, Any]) -> str:
    if "snap" not in row:
        return ""
    return f"{row['snap']:g}" + (f" ({row['proxy_no_snap']:.3f})" if "proxy_no_snap" in row else "")


def search_markdown(search: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The training recipes each trained map's pilots tried, with the ranking proxy after each pilot."""
    if not any(search.values()):
        return []
    lines = ["", "| trained map | step size | anchor | pilot steps | proxy after the pilot |"]
    lines.append("|---|---|---:|---:|---:|")
    for name, tried in search.items():
        best = min(t["proxy"] for t in tried) if tried else None
        for t in tried:
            step = f"{t['lr']:g}" if t.get("lr") is not None else f"{t['lr_rel']:g} x scale"
            mark = "**" if t["proxy"] == best else ""
            lines.append(f"| {name} | {step} | {t['anchor']:g} | {t['steps']} | {mark}{t['proxy']:.3f}{mark} |")
    return lines


def fit_markdown(
    rows: list[dict[str, Any]], timings: dict[str, float], search: dict[str, list[dict[str, Any]]] | None = None
) -> str:
    xsrc = any("kl_xsrc" in r for r in rows)
    lines = [
        "| direction | layers | method | proxy KL |"
        + (" proxy KL, other source |" if xsrc else "")
        + " snap (ranking proxy without) | pairing | R² | cosine | mean-baseline cosine | centred cosine |"
        + " retrieval@1 | pairs |",
        "|---|---|---|---:|" + ("---:|" if xsrc else "") + "---|---|---:|---:|---:|---:|---:|---:|",
    ]
    keyed = [(MapKey.from_entry(r), r) for r in rows]
    for key, r in sorted(keyed, key=lambda kr: (kr[0].source, kr[0].source_layers, kr[0].target_layer, kr[0].method)):
        lines.append(
            f"| {r['source']} -> {r['target']} | {key.layers_label} | {r['method']} | "
            f"{_f(r.get('kl'))} |"
            + (f" {_f(r.get('kl_xsrc'))} |" if xsrc else "")
            + f" {_snap(r)} | {r.get('pairing', '')} | {_f(r.get('r2'))} | {_f(r.get('cosine'))} | "
            f"{_f(r.get('mean_baseline_cosine'))} | {_f(r.get('centred_cosine'))} | {_f(r.get('retrieval_at_1'))} | "
            f"{r.get('n_pairs_fit', '')} |"
        )
    lines += [
        "",
        "proxy KL: held-out KL (nats per probe token) of the target's next-token distributions after the handover "
        "against reading the text itself; lower is better, 0 = nothing lost. snap: the share of the way the map's "
        "states move toward the target's nearest embedding rows (maps into layer 0; a trained map into a deeper layer "
        "moves by the same correction, read out by the map into layer 0 from its source layers), chosen by the "
        "ranking proxy (fit --rank-by). pairing: how tokens were paired across the tokenizers (maps into layer 0: the "
        "one the ranking proxy scored lower)."
        + (
            " proxy KL, other source: the same on probes of passages from a source the maps were not calibrated on "
            "(fit --proxy-data), each map as served."
            if xsrc
            else ""
        ),
    ]
    lines += search_markdown(search or {})
    skipped = sorted({r["no_pilots"] for r in rows if r.get("no_pilots")})  # one line per direction
    lines += ["", *skipped] if skipped else []
    lines += ["", "| step | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


def heatmap(
    values: dict[tuple[tuple[int, ...], str], float], title: str, path: Path, label: str, vmin: float | None = None
) -> None:
    """A source layer(s) x method heatmap of one metric (best over target layers), saved as PNG."""
    plt = _pyplot()

    layers = sorted({k[0] for k in values})
    methods = sorted({k[1] for k in values})
    grid = [[values.get((layer, m), float("nan")) for layer in layers] for m in methods]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.5 + 0.7 * len(layers)), 1.5 + 0.5 * len(methods)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=vmin)
    ax.set_xticks(range(len(layers)), [f"L{layers_name(layer)}" for layer in layers])
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("source layer")
    ax.set_title(title, fontsize=9)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(
                    j, i, f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}", ha="center", va="center", color="w", fontsize=7
                )
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    """The ranking proxy's held-out KL (and the running train KL) against training steps, one line per trained map,
    saved as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        line = ax.plot([c["step"] for c in curve], [c["heldout_kl"] for c in curve], marker="o", ms=3, label=name)
        train = [(c["step"], c["train_kl"]) for c in curve if c["train_kl"] == c["train_kl"]]
        if train:
            ax.plot(*zip(*train, strict=True), ls=":", color=line[0].get_color())
    ax.set_xlabel("training step")
    ax.set_ylabel("KL (nats per probe token)")
    ax.set_title("held-out KL of the ranking proxy (solid), running train KL (dotted)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
