"""Throughput and latency of a running server under concurrent clients: ``native`` and ``replace`` side by side.

    make serve &                                   # or any deployment
    python benchmarks/bench_service.py --url http://127.0.0.1:8000 --clients 16 --requests 4

Each round sends clients x requests /generate calls of one mode (rounds alternate between the modes, twice each),
with a fixed output length (the server's EOS still ends a completion early). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

TEXT = (
    "Ysolde Marrow founded the Quillmere Lighthouse Company in 1874, three years after the harbor was rebuilt "
    "in stone. Her partner, Corin Aske, designed the first lamp."
)
PROMPT = "\nQuestion: Who designed the first lamp?\nAnswer:"


async def round_(url: str, mode: str, clients: int, requests: int, pair: dict, tokens: int) -> dict[str, list]:
    latencies: list[float] = []
    completion: list[int] = []
    failures = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal failures
        for _ in range(requests):
            start = time.perf_counter()
            r = await c.post(
                "/generate", json={**pair, "text": TEXT, "prompt": PROMPT, "mode": mode, "max_new_tokens": tokens}
            )
            latencies.append(time.perf_counter() - start)
            if r.status_code == 200:
                completion.append(r.json()["usage"]["completion_tokens"])
            else:
                failures += 1

    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "completion": completion, "wall": [wall], "failures": [failures]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens per request")
    parser.add_argument("--source", help="source model alias (default: that of the first default map)")
    parser.add_argument("--target", help="target model alias (default: that of the first default map)")
    args = parser.parse_args()
    models = httpx.get(f"{args.url}/v1/models", timeout=30).json()
    defaults = [
        m
        for m in models["maps"]
        if m["default"] and args.source in (None, m["source"]) and args.target in (None, m["target"])
    ]
    if not defaults:
        raise SystemExit(f"no default map for source={args.source} target={args.target} on {args.url}")
    default = defaults[0]
    pair = {"source": default["source"], "target": default["target"]}
    totals: dict[str, dict[str, list]] = {
        m: {"latencies": [], "completion": [], "wall": [], "failures": []} for m in ("native", "replace")
    }
    for _ in range(2):
        for mode in ("native", "replace"):
            result = asyncio.run(round_(args.url, mode, args.clients, args.requests, pair, args.tokens))
            for k, v in result.items():
                totals[mode][k].extend(v)
    print(
        f"{pair['source']} -> {pair['target']}, map L{default['source_layer']}->L{default['target_layer']} "
        f"{default['method']}, {args.clients} clients x {args.requests} requests x 2 rounds per mode"
    )
    print(
        "\n| mode | requests/s | tokens/s | p50 latency s | p99 latency s | failures |\n|---|---:|---:|---:|---:|---:|"
    )
    rates = {}
    for mode, t in totals.items():
        wall = sum(t["wall"])
        lat = sorted(t["latencies"])
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        rates[mode] = len(lat) / wall
        print(
            f"| {mode} | {rates[mode]:.2f} | {sum(t['completion']) / wall:.1f} | {statistics.median(lat):.2f} | "
            f"{p99:.2f} | {sum(t['failures'])} |"
        )
    print(f"\nreplace / native throughput: {rates['replace'] / rates['native']:.2f}x")


if __name__ == "__main__":
    main()
