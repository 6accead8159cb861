"""Throughput and latency of running servers under concurrent clients: modes side by side, servers side by side.

    make serve &                                   # or any deployment
    python benchmarks/bench_service.py --url http://127.0.0.1:8000 --clients 16 --requests 4

    INTERLINGUA_PORT=8001 make serve &             # the single-process server on 8001 ...
    make serve-ray &                               # ... and the Ray Serve application on 8000 (deploy/ray-serve.yaml)
    python benchmarks/bench_service.py --url single=http://127.0.0.1:8001 --url ray=http://127.0.0.1:8000

Each round sends clients x requests /generate calls of one mode to one server (rounds interleave servers and modes),
with a fixed output length (the server's EOS still ends a completion early); then requests one at a time measure
what a request costs alone (with two servers: the difference is the cost of the extra hops). Prints Markdown tables.
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


def table(totals: dict[str, dict[str, list]]) -> dict[str, float]:
    print("\n| server | mode | requests/s | tokens/s | p50 latency s | p99 latency s | failures |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rates = {}
    for name, t in totals.items():
        wall = sum(t["wall"])
        lat = sorted(t["latencies"])
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        rates[name] = len(lat) / wall
        server, mode = name.split("/")
        print(
            f"| {server} | {mode} | {rates[name]:.2f} | {sum(t['completion']) / wall:.1f} | "
            f"{statistics.median(lat):.3f} | {p99:.3f} | {sum(t['failures'])} |"
        )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--url",
        action="append",
        help="a server, as URL or NAME=URL; repeat to compare servers in one run (default http://127.0.0.1:8000)",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server and mode (interleaved)")
    parser.add_argument("--modes", default="native,replace", help="comma-separated modes")
    parser.add_argument("--sequential", type=int, default=20, help="one-at-a-time requests per server (hop cost)")
    parser.add_argument("--source", help="source model alias (default: that of the first default map)")
    parser.add_argument("--target", help="target model alias (default: that of the first default map)")
    args = parser.parse_args()
    servers = dict(u.split("=", 1) if "=" in u else (u, u) for u in (args.url or ["http://127.0.0.1:8000"]))
    first = next(iter(servers.values()))
    models = httpx.get(f"{first}/v1/models", timeout=30).json()
    defaults = [
        m
        for m in models["maps"]
        if m["default"] and args.source in (None, m["source"]) and args.target in (None, m["target"])
    ]
    if not defaults:
        raise SystemExit(f"no default map for source={args.source} target={args.target} on {first}")
    default = defaults[0]
    pair = {"source": default["source"], "target": default["target"]}
    modes = args.modes.split(",")
    keys = [f"{name}/{mode}" for name in servers for mode in modes]
    totals: dict[str, dict[str, list]] = {
        k: {"latencies": [], "completion": [], "wall": [], "failures": []} for k in keys
    }
    hop: dict[str, dict[str, list]] = {
        f"{name}/{modes[-1]} x1": {"latencies": [], "completion": [], "wall": [], "failures": []} for name in servers
    }
    for _ in range(args.rounds):  # servers and modes interleaved, so that both see the same machine
        for name, url in servers.items():
            for mode in modes:
                result = asyncio.run(round_(url, mode, args.clients, args.requests, pair, args.tokens))
                for k, v in result.items():
                    totals[f"{name}/{mode}"][k].extend(v)
            if args.sequential:
                result = asyncio.run(round_(url, modes[-1], 1, args.sequential // args.rounds or 1, pair, args.tokens))
                for k, v in result.items():
                    hop[f"{name}/{modes[-1]} x1"][k].extend(v)
    print(
        f"{pair['source']} -> {pair['target']}, map L{default['source_layer']}->L{default['target_layer']} "
        f"{default['method']}, {args.clients} clients x {args.requests} requests x {args.rounds} rounds per server "
        f"and mode, max_new_tokens {args.tokens}"
    )
    rates = table(totals)
    if args.sequential:
        print("\nOne request at a time:")
        table(hop)
    names = list(servers)
    for mode in modes:
        if "replace" in modes and mode != "replace":
            for name in names:
                print(f"{name}: replace / {mode} throughput {rates[f'{name}/replace'] / rates[f'{name}/{mode}']:.2f}x")
    if len(names) > 1:
        base = names[0]
        for name in names[1:]:
            for mode in modes:
                print(f"{name} / {base} throughput, {mode}: {rates[f'{name}/{mode}'] / rates[f'{base}/{mode}']:.2f}x")
            if args.sequential:
                a = statistics.median(hop[f"{name}/{modes[-1]} x1"]["latencies"])
                b = statistics.median(hop[f"{base}/{modes[-1]} x1"]["latencies"])
                print(f"{name} - {base} median latency of one request alone ({modes[-1]}): {(a - b) * 1e3:+.0f} ms")


if __name__ == "__main__":
    main()
