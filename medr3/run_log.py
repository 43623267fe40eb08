"""The run log: step metrics to `metrics.jsonl`, TensorBoard and a one-line progress report (Ray metrics live in
actors/ray_metrics.py).

On resume, lines and events past the last checkpoint are dropped, so a redone step is never counted twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from medr3.atomic import write_text_atomic


class MetricsLog:
    def __init__(self, out_dir: str | Path, resume_after: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.samples = self.out_dir / "samples.jsonl"
        for path in (self.path, self.samples):
            _truncate(path, resume_after)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events logged after the checkpoint we resume from.
        self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_after + 1)

    def log(self, record: dict) -> None:
        """`record` holds `global_step`, `stage`, `stage_step` and float metrics."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = record["global_step"]
        for key, value in record.items():
            if isinstance(value, int | float) and key != "global_step":
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def sample(self, record: dict) -> None:
        """One example trajectory per step, for reading what the policy writes."""
        with open(self.samples, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.tb.close()


def _truncate(path: Path, keep_through: int) -> None:
    """Keep only the lines of steps up to `keep_through` (0 = start afresh)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["global_step"] <= keep_through]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress_line(r: dict) -> str:
    if r["stage"] == "warmup":  # supervised: no rollout, no reward
        return (
            f"[{r['stage']:9s} {r['stage_step']:3d} | step {r['global_step']:4d}] "
            f"sft loss {r.get('train/loss', 0):.4f}  {r.get('train/tokens_per_s', 0):5.0f} tokens/s  "
            f"{r.get('timing/step', 0):5.1f}s"
        )
    return (
        f"[{r['stage']:9s} {r['stage_step']:3d} | step {r['global_step']:4d}] "
        f"reward {r.get('reward/total', 0):+.3f}  acc {r.get('rollout/accuracy', 0):.2f}  "
        f"format {r.get('rollout/format_rate', 0):.2f}  search {r.get('rollout/searches_per_traj', 0):.2f}  "
        f"len {r.get('rollout/response_tokens', 0):5.1f}  loss {r.get('train/loss', 0):+.4f}  "
        f"{r.get('timing/step', 0):5.1f}s"
    )
