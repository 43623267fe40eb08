"""Load-test the Serve endpoint on 127.0.0.1 at concurrency 1, 8 and 32 (requests/s, p50/p95 latency, errors), then
kill the model replica and time Serve's replacement.

    python bench/bench_serve.py                                   # starts the app itself (tiny model, small index)
    python bench/bench_serve.py --url http://127.0.0.1:8000       # against a running endpoint (loopback only)

Each level sends a bounded number of requests (--requests, default 4 x concurrency, at least 8) for each route —
chat (non-streamed), chat streamed (latency = last byte; time to first token reported too) and /v1/answer — and stops
early after --max-seconds per level. Concurrency 1 is the baseline the other levels' throughput is divided by.

Then, on the app it started (not with --url; --no-kill skips it), it SIGKILLs the model replica's process and sends a
chat request every 0.2 s: the seconds from the kill to the first 200, and how many requests were refused meanwhile
and how fast (each should be a JSON 503 in well under a second, not held until the new replica serves). The last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback cluster (docs/architecture.md)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MESSAGES = [{"role": "user", "content": "A patient has bleeding gums and bruises easily. What deficiency is likely?"}]
QUESTION = {"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "Vitamin C", "B": "Vitamin D"}}


def _request(route: str, i: int, max_tokens: int) -> tuple[str, dict]:
    if route == "answer":
        return "/v1/answer", {**QUESTION, "max_searches": 1}
    chat = {"model": "medr3", "messages": MESSAGES, "max_tokens": max_tokens, "seed": i}
    return "/v1/chat/completions", {**chat, "stream": route == "stream"}


async def _one(client: httpx.AsyncClient, route: str, i: int, max_tokens: int) -> tuple[float, float | None, bool]:
    """(latency s, time to first content s or None, ok)."""
    path, body = _request(route, i, max_tokens)
    start = time.perf_counter()
    try:
        if route != "stream":
            r = await client.post(path, json=body)
            return time.perf_counter() - start, None, r.status_code == 200
        first, last = None, ""
        async with client.stream("POST", path, json=body) as r:
            async for line in r.aiter_lines():
                if first is None and _has_content(line):
                    first = time.perf_counter() - start
                last = line or last
        return time.perf_counter() - start, first, r.status_code == 200 and last == "data: [DONE]"
    except httpx.HTTPError:
        return time.perf_counter() - start, None, False


async def _level(url: str, route: str, concurrency: int, count: int, max_seconds: float, max_tokens: int) -> dict:
    results: list[tuple[float, float | None, bool]] = []
    deadline = time.perf_counter() + max_seconds
    todo = iter(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in todo:  # the shared iterator hands each request to exactly one worker
            if time.perf_counter() > deadline:
                return
            results.append(await _one(client, route, i, max_tokens))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    firsts = [r[1] for r in results if r[1] is not None]
    return {
        "n": len(results),
        "errors": sum(not r[2] for r in results),
        "rps": len(results) / wall,
        "p50": _pct(latencies, 50),
        "p95": _pct(latencies, 95),
        "ttft": statistics.median(firsts) if firsts else None,
    }


def _has_content(line: str) -> bool:
    return line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


def _kill_and_recover(url: str, app: str, limit_s: float = 300) -> dict:
    """SIGKILL app `app`'s model replica; a chat request every 0.2 s until one is served (see the module docstring)."""
    import psutil

    title = f"ServeReplica:{app}:MedR3Model"  # Ray's process title for the replica
    (replica,) = [p for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]
    body = {"model": "medr3", "messages": MESSAGES, "max_tokens": 8}
    refused, not_json_503 = [], 0
    os.kill(replica.pid, signal.SIGKILL)
    killed = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.perf_counter() - killed < limit_s:
            sent = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            if r.status_code == 200:
                break
            refused.append(time.perf_counter() - sent)
            is_json = r.headers.get("content-type", "").startswith("application/json")
            not_json_503 += not (r.status_code == 503 and "retry-after" in r.headers and is_json)
            time.sleep(0.2)
    refused.sort()
    return {
        "recovery_s": round(time.perf_counter() - killed, 1),
        "refused": len(refused),
        "refused_not_json_503": not_json_503,
        "refused_p50_ms": round(_pct(refused, 50) * 1000, 1) if refused else None,
        "refused_max_ms": round(refused[-1] * 1000, 1) if refused else None,
    }


def _start_local_app(port: int, extra: list[str]):
    """Start Ray and the app on the tiny model with a small index of the bundled corpus (built once, in /tmp)."""
    import ray
    from ray import serve

    from serve.app import build_app

    index = _small_index(Path(tempfile.gettempdir()) / "medr3_bench_serve_index")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    overrides = [f"retriever.index_path={index}", "retriever.batch_size=64", "serve.max_tokens=64", "serve.top_k=2"]
    overrides += extra
    if not (ROOT / "artifacts/models/tiny/config.json").is_file():
        raise SystemExit("artifacts/models/tiny is missing: run ./setup.sh first")
    serve.run(build_app({"config": "configs/tiny.yaml", "set": overrides}), name="medr3-bench", route_prefix="/")
    return serve


def _small_index(folder: Path) -> str:
    import itertools
    import lzma

    from medr3.config import RetrieverConfig
    from medr3.retrieval.indexer import build_index
    from medr3.retrieval.manifest import IndexNotReadyError

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.jsonl"
    if not corpus.is_file():
        with lzma.open(ROOT / "data/corpus/bioasq_snippet.jsonl.xz", "rt", encoding="utf-8") as f:
            corpus.write_text("".join(itertools.islice(f, 300)), encoding="utf-8")
    config = RetrieverConfig(index_path=str(folder / "index"), batch_size=64)
    try:
        build_index(config, corpus, progress=False)  # a finished index is left as it is
    except IndexNotReadyError:  # built by an older indexer: this cache is the bench's own, so rebuild it
        build_index(config, corpus, progress=False, force=True)
    return config.index_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="A running endpoint on 127.0.0.1 (default: start one on the tiny model).")
    parser.add_argument("--port", type=int, default=8790, help="Port of the app this script starts.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    routes = ["chat", "stream", "answer"]
    parser.add_argument("--routes", nargs="+", default=routes, choices=routes)
    parser.add_argument("--requests", type=int, help="Requests per level and route (default 4 x concurrency, >= 8).")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="Time limit per level and route.")
    parser.add_argument("--set", action="append", default=[], help="Config override for the app this script starts.")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each chat request.")
    parser.add_argument("--no-kill", action="store_true", help="Skip killing the replica of the app this starts.")
    args = parser.parse_args(argv)
    if args.url and urlparse(args.url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("this benchmark only sends requests to 127.0.0.1")
    served = None if args.url else _start_local_app(args.port, args.set)
    url = args.url or f"http://127.0.0.1:{args.port}"
    figures: dict = {"levels": [], "kill": None}
    try:
        httpx.get(f"{url}/healthz", timeout=30).raise_for_status()
        print(f"{'route':<7} {'conc':>4} {'n':>4} {'errors':>6} {'req/s':>7} {'x c=1':>6} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'ttft ms':>8}")  # fmt: skip
        for route in args.routes:
            base = None
            for c in args.concurrency:
                count = args.requests or max(8, 4 * c)
                r = asyncio.run(_level(url, route, c, count, args.max_seconds, args.max_tokens))
                base = base or r["rps"]
                ttft = f"{r['ttft'] * 1000:8.0f}" if r["ttft"] is not None else f"{'-':>8}"
                print(
                    f"{route:<7} {c:>4} {r['n']:>4} {r['errors']:>6} {r['rps']:>7.1f} {r['rps'] / base:>6.2f} "
                    f"{r['p50'] * 1000:>8.0f} {r['p95'] * 1000:>8.0f} {ttft}",
                    flush=True,
                )
                ms = {k: round(r[k] * 1000, 1) if r[k] is not None else None for k in ("p50", "p95", "ttft")}
                level = {
                    "route": route,
                    "concurrency": c,
                    "n": r["n"],
                    "errors": r["errors"],
                    "rps": round(r["rps"], 2),
                }
                figures["levels"].append({**level, **{f"{k}_ms": v for k, v in ms.items()}})
        if served is not None and not args.no_kill:
            figures["kill"] = _kill_and_recover(url, "medr3-bench")
            k = figures["kill"]
            print(
                f"replica killed: served again {k['recovery_s']} s later; meanwhile {k['refused']} requests refused "
                f"(p50 {k['refused_p50_ms']} ms, max {k['refused_max_ms']} ms; {k['refused_not_json_503']} not a "
                "JSON 503)",
                flush=True,
            )
    finally:
        if served is not None:
            served.shutdown()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
