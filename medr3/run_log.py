"""The run log: step metrics to `metrics.jsonl`, TensorBoard and a one-line progress report with ETAs (Ray metrics
live in actors/ray_metrics.py).

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
        self.tb = None
        self.rewind(resume_after)

    def rewind(self, keep_through: int) -> None:
        """Drop the lines and TensorBoard events of steps after `keep_through`: the checkpoint a run resumes or
        restarts from, so that a redone step is logged once."""
        from torch.utils.tensorboard import SummaryWriter

        for path in (self.path, self.samples):
            _truncate(path, keep_through)
        if self.tb:
            self.tb.close()
        # purge_step drops events logged after the checkpoint.
        self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=keep_through + 1)

    def log(self, record: dict) -> None:
        """`record` holds `global_step`, `stage`, `stage_step` and float metrics; a list (a step's per-group rewards)
        goes to metrics.jsonl only."""
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


class StepClock:
    """Seconds per step so far, per stage, for the progress line's ETAs. A stage that has not run yet is estimated
    from the mean over the GRPO steps run so far (the warm start's supervised steps are much shorter); the warm start
    has no estimate until its first step."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.times.setdefault(stage, []).append(seconds)

    def per_step(self, stage: str) -> float | None:
        own = self.times.get(stage)
        if not own and stage != "warmup":
            own = [t for s, ts in self.times.items() if s != "warmup" for t in ts]
        return sum(own) / len(own) if own else None

    def remaining(self, steps_left: dict[str, int], extra_s: float = 0.0, known_only: bool = False) -> float | None:
        """Seconds for `steps_left[stage]` more steps of each stage, plus `extra_s`; None while a stage with steps
        left has no estimate, or with `known_only` the seconds of the stages that have one (a lower bound)."""
        total = extra_s
        for stage, steps in steps_left.items():
            if steps > 0:
                per_step = self.per_step(stage)
                if per_step is None and not known_only:
                    return None
                total += steps * (per_step or 0.0)
        return total


def duration(seconds: float | None) -> str:
    """`1:02:03`, `2:03`; `?` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(
    r: dict, stage_steps: int, eta_stage: float | None = None, eta_job: float | None = None, job_floor: bool = False
) -> str:
    """One console line per step: where the job is, the step's main metrics, its time and the ETAs (`job_floor`:
    the job's ETA leaves out stages not timed yet, so it shows as `>` a lower bound)."""
    where = f"[{r['stage']:9s} {r['stage_step']:3d}/{stage_steps:<3d} | step {r['global_step']:4d}]"
    if r["stage"] == "warmup":  # supervised: no rollout, no reward
        what = f"sft loss {r.get('train/loss', 0):.4f}  {r.get('train/tokens_per_s', 0):5.0f} tokens/s"
    else:
        what = (
            f"reward {r.get('reward/total', 0):+.3f}  acc {r.get('rollout/accuracy', 0):.2f}  "
            f"format {r.get('rollout/format_rate', 0):.2f}  search {r.get('rollout/searches_per_traj', 0):.2f}  "
            + (f"loss {r.get('train/loss', 0):+.4f}" if r.get("train/samples", 1) else "learner skipped")
        )
    job = (">" if job_floor and eta_job is not None else "") + duration(eta_job)
    when = f"{r.get('timing/step', 0):5.1f} s/step  ETA stage {duration(eta_stage)}  job {job}"
    return f"{where} {what} | {when}"
