"""End-of-run report: curves per stage (PNG) and a short Markdown summary, from `metrics.jsonl`."""

from __future__ import annotations

from pathlib import Path

from medr3.config import STAGE_NAMES
from medr3.metrics import read_metrics

CURVES = (
    "reward/total",
    "rollout/accuracy",
    "rollout/format_rate",
    "rollout/searches_per_traj",
    "rollout/response_tokens",
    "train/loss",
)


def write_report(out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    records = read_metrics(out_dir / "metrics.jsonl")
    png = out_dir / "report.png"
    _plot(records, png)
    md = out_dir / "summary.md"
    md.write_text(_summary(records), encoding="utf-8")
    return png, md


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7), constrained_layout=True)
    for ax, key in zip(axes.flat, CURVES):
        for stage in STAGE_NAMES:
            points = [(r["global_step"], r[key]) for r in records if r["stage"] == stage and key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=stage)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary(records: list[dict]) -> str:
    lines = [
        "# Med-R³ run summary",
        "",
        "| stage | steps | reward first → last | accuracy first → last | format first → last | searches/traj |",
        "|---|---|---|---|---|---|",
    ]
    for stage in STAGE_NAMES:
        rows = [r for r in records if r["stage"] == stage]
        if not rows:
            continue

        def span(key: str, rows=rows) -> str:
            return f"{rows[0].get(key, 0):.3f} → {rows[-1].get(key, 0):.3f}"

        searches = sum(r.get("rollout/searches_per_traj", 0) for r in rows) / len(rows)
        lines.append(
            f"| {stage} | {len(rows)} | {span('reward/total')} | {span('rollout/accuracy')} | "
            f"{span('rollout/format_rate')} | {searches:.2f} |"
        )
    total_time = sum(r.get("timing/step", 0) for r in records)
    lines += ["", f"{len(records)} steps, {total_time / 60:.1f} min of step time.", ""]
    return "\n".join(lines)
