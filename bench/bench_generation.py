"""Generation throughput: GeneratorWorker (vLLM, through the Ray actor) vs HF transformers `generate`, same prompts
and sampling, in one process; then a multi-turn rollout with retrieval (trajectories/s, share of time retrieving).

    python bench/bench_generation.py [--models smollm2 tiny] [--prompts 32] [--n 4] [--max-tokens 128]

HF `generate` is timed on `--hf-prompts` of the prompts (tokens/s is a rate; the full set takes many minutes on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
MODELS = {"smollm2": ROOT / "artifacts/models/smollm2-135m-instruct", "tiny": ROOT / "artifacts/models/tiny"}


def prompts(tokenizer, count: int) -> list[list[int]]:
    from medr3.data import load_huatuo
    from medr3.protocol import build_prompt

    questions, _ = load_huatuo(ROOT / "data/train/huatuogpt_o1_demo_195.json.xz", limit=count)
    return [tokenizer(build_prompt(q, tokenizer), add_special_tokens=False).input_ids for q in questions]


def bench_vllm(pool, ids: list[list[int]], n: int, max_tokens: int) -> tuple[float, int]:
    from medr3.rollout import GenRequest

    requests = [GenRequest(p, max_tokens, (), seed=i * n + j) for i, p in enumerate(ids) for j in range(n)]
    pool.generate(requests[:2], temperature=1.0)  # warm-up
    start = time.perf_counter()
    outs = pool.generate(requests, temperature=1.0)
    return time.perf_counter() - start, sum(len(o.token_ids) for o in outs)


def bench_hf(model_dir: Path, tokenizer, ids: list[list[int]], n: int, max_tokens: int) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = max(len(p) for p in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids])  # left padding for decoder-only models
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=max_tokens,
            num_return_sequences=n,
            pad_token_id=pad,
        )
    elapsed = time.perf_counter() - start
    new = out[:, width:]
    eos = tokenizer.eos_token_id
    tokens = sum(int((row != pad).sum()) if eos is None else _until_eos(row.tolist(), eos) for row in new)
    return elapsed, tokens


def _until_eos(row: list[int], eos: int) -> int:
    return row.index(eos) + 1 if eos in row else len(row)


def bench_rollout(pool, tokenizer, config, count: int) -> dict:
    from actors.retriever import SearchPool
    from medr3.data import load_pubmedqa
    from medr3.rollout import Rollout, RolloutSettings

    search = SearchPool(config.retriever)
    spent = [0.0]

    def timed_search(queries):
        start = time.perf_counter()
        try:
            return search.batch_search(queries, k=config.retriever.top_k)
        finally:
            spent[0] += time.perf_counter() - start

    questions, _ = load_pubmedqa(ROOT / "data/train/pubmedqa_pqal_nontest500.jsonl.xz", limit=count)
    settings = RolloutSettings(256, config.generator.max_model_len, max_searches=2, max_document_tokens=96)
    rollout = Rollout(tokenizer, lambda reqs: pool.generate(reqs, 1.0, 1.0), timed_search, settings)
    start = time.perf_counter()
    trajs = rollout.run(questions, n=4, search=True)
    wall = time.perf_counter() - start
    search.shutdown()
    searches = sum(len(t.searches) for t in trajs)
    return {
        "trajectories": len(trajs),
        "traj_per_s": len(trajs) / wall,
        "searches": searches,
        "retrieval_share": spent[0] / wall,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"], choices=sorted(MODELS))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--hf-prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default="runs/bench_generation.json")
    args = parser.parse_args()

    import ray
    from transformers import AutoTokenizer

    from actors.generator import GeneratorPool
    from medr3.config import load_config

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    results = {}
    for name in args.models:
        model_dir = MODELS[name]
        config = load_config(ROOT / "configs/default.yaml", [f"model.path={model_dir}", "generator.threads=2"])
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ids = prompts(tokenizer, args.prompts)
        pool = GeneratorPool(config)
        pool.wait_ready()
        v_s, v_tok = bench_vllm(pool, ids, args.n, args.max_tokens)
        rollout = bench_rollout(pool, tokenizer, config, count=8)
        pool.shutdown()
        h_s, h_tok = bench_hf(model_dir, tokenizer, ids[: args.hf_prompts], args.n, args.max_tokens)
        results[name] = {
            "vllm_tok_per_s": v_tok / v_s,
            "vllm_tokens": v_tok,
            "hf_tok_per_s": h_tok / h_s,
            "hf_tokens": h_tok,
            "ratio": (v_tok / v_s) / (h_tok / h_s),
            "rollout": rollout,
        }
        r = results[name]
        print(
            f"{name:8s} vLLM actor {r['vllm_tok_per_s']:8.1f} tok/s | HF generate {r['hf_tok_per_s']:7.1f} tok/s | "
            f"ratio {r['ratio']:5.2f}x | rollout {rollout['traj_per_s']:.2f} traj/s, "
            f"{rollout['searches']} searches, retrieval {100 * rollout['retrieval_share']:.1f}% of wall",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
