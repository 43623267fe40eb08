"""Pipelined vs serial steps of the main job: the same config and steps run twice, one after the other, and the mean
step time compared (the first step, which includes warm-up, is left out).

    python bench/bench_pipeline.py [--config configs/default.yaml] [--steps 4]

Each run is `pipelines/progressive.py` as a subprocess (entry points are not imported), reasoning stage only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(config: str, steps: int, pipelined: bool, out_dir: Path) -> list[dict]:
    sets = [
        f"run.output_dir={out_dir}",
        "stages.warmup.steps=0",
        "run.final_eval=false",
        f"stages.reasoning.steps={steps}",
        "stages.retrieval.steps=0",
        "stages.joint.steps=0",
        f"grpo.pipelined={str(pipelined).lower()}",
    ]
    cmd = [sys.executable, str(ROOT / "pipelines/progressive.py"), "--config", config, "--fresh"]
    subprocess.run(cmd + [a for s in sets for a in ("--set", s)], cwd=ROOT, check=True, capture_output=True)
    with open(out_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    means = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("serial", "pipelined"):
            rows = run(args.config, args.steps, mode == "pipelined", Path(tmp) / mode)
            steps = [r["timing/step"] for r in rows[1:]]
            means[mode] = statistics.mean(steps)
            phases = {
                k.removeprefix("timing/"): round(statistics.mean(r.get(k, 0) for r in rows[1:]), 2)
                for k in ("timing/generate", "timing/train", "timing/sync")
            }
            print(f"{mode:9s} mean step {means[mode]:6.2f}s over {len(steps)} steps  {phases}", flush=True)
    print(
        f"pipelined / serial step time: {means['pipelined'] / means['serial']:.2f}  "
        f"(speed-up {means['serial'] / means['pipelined']:.2f}x)"
    )


if __name__ == "__main__":
    main()
