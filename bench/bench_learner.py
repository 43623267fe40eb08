"""Learner throughput in fp32 and in bf16 on the same batch, against the machine's own bf16 matmul peak (one process).

    python bench/bench_learner.py [--config configs/default.yaml] [--samples 16] [--response 128] [--steps 4]

Each precision trains a `LearnerRank` (the plain class behind the Ray actor: DeepSpeed ZeRO on one rank, gloo) for
`--steps` GRPO steps on the same batch of HEAD-QA prompts with random responses; the first step is warm-up. Model
FLOPs are 6 × parameters × tokens (forward and backward). The last line is a JSON object:
`{"fp32_tok_s", "bf16_tok_s", "peak_bf16_gflops", "fraction_of_peak", ...}`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def matmul_gflops(dtype, size: int = 2048, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def batch(config, samples: int, response: int, seed: int = 0) -> list:
    from transformers import AutoTokenizer

    from medr3.data import load_headqa
    from medr3.packing import TrainSample
    from medr3.protocol import build_prompt

    tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer_path)
    questions, _ = load_headqa(ROOT / "data/train/headqa_en/train_HEAD_EN.json.xz", limit=samples)
    rng = random.Random(seed)
    out = []
    for q in questions:
        prompt = tokenizer(build_prompt(q, tokenizer), add_special_tokens=False).input_ids
        resp = [rng.randrange(100, tokenizer.vocab_size) for _ in range(response)]
        out.append(TrainSample(prompt + resp, len(prompt), [1] * response, [-2.0] * response, rng.uniform(-1, 1)))
    return out


def throughput(config, precision: str, samples: list, steps: int) -> tuple[float, int]:
    """Median learner tokens/s over steps 2..N, and the parameter count."""
    from actors.learner import LearnerRank
    from medr3.packing import pack

    cfg = config.model_copy(deep=True)
    cfg.learner.precision = precision
    rank = LearnerRank(cfg, 0, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rank.setup("127.0.0.1", port)
    total = sum(s.trained_tokens for s in samples)
    speeds = []
    for _ in range(steps):
        plan = [(pack(samples, cfg.learner.micro_batch_tokens, 1)[0], total)]
        speeds.append(rank.train(plan)["tokens_per_s"])
    params = sum(p.numel() for p in rank.engine.module.parameters())
    return statistics.median(speeds[1:]), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    import torch

    from medr3.config import load_config

    config = load_config(args.config)
    torch.set_num_threads(config.learner.cpu_threads)
    peak = matmul_gflops(torch.bfloat16)
    fp32_peak = matmul_gflops(torch.float32)
    samples = batch(config, args.samples, args.response)
    tokens = sum(len(s.input_ids) for s in samples)
    result = {}
    for precision in ("fp32", "bf16"):
        speed, params = throughput(config, precision, samples, args.steps)
        result[f"{precision}_tok_s"] = round(speed, 1)
        print(f"{precision}: {speed:7.1f} tokens/s ({tokens} tokens a step, {params / 1e6:.1f} M parameters)")
    achieved = 6 * params * result["bf16_tok_s"] / 1e9
    result |= {
        "peak_bf16_gflops": round(peak, 1),
        "peak_fp32_gflops": round(fp32_peak, 1),
        "bf16_model_gflops": round(achieved, 1),
        "fraction_of_peak": round(achieved / peak, 3),
        "bf16_over_fp32": round(result["bf16_tok_s"] / result["fp32_tok_s"], 2),
        "threads": config.learner.cpu_threads,
    }
    print(f"bf16 matmul peak {peak:.0f} GFLOPS (fp32 {fp32_peak:.0f}); the bf16 learner reaches {achieved:.0f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
