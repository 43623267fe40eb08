"""End-of-run report: curves per stage (PNG) and a short Markdown summary, from `metrics.jsonl` and, when the run
evaluated before and after, `final_eval.json`."""

from __future__ import annotations

import json
import os
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

from medr3.config import STAGE_NAMES
from medr3.console import short_path
from medr3.final_eval import BOOTSTRAP_SAMPLES, MODES, percentile_interval
from medr3.final_eval import markdown as final_eval_markdown
from medr3.run_log import read_metrics

STAGES = ("warmup", *STAGE_NAMES)
GROUP_MEANS = "reward/group_means"  # a GRPO step's per-prompt mean rewards (pipelines/progressive.py)
COLORS = dict(zip(STAGES, ("tab:grey", "tab:blue", "tab:orange", "tab:green"), strict=True))  # same in every panel

CURVES = (
    "reward/total",
    "rollout/accuracy",
    "rollout/format_rate",
    "rollout/searches_per_traj",
    "rollout/response_tokens",
    "train/loss",
)


def write_report(out_dir: str | Path, readme: str = "") -> tuple[Path, Path]:
    """`report.png` and `summary.md` (under `readme`, see `run_readme`) in `out_dir`."""
    out_dir = Path(out_dir)
    records = read_metrics(out_dir / "metrics.jsonl")
    evaluation = out_dir / "final_eval.json"
    final = json.loads(evaluation.read_text(encoding="utf-8")) if evaluation.exists() else {}
    png = out_dir / "report.png"
    _plot(records, final, png)
    md = out_dir / "summary.md"
    top = readme + "\n\n" if readme else ""
    md.write_text(top + _summary(records) + "\n" + final_eval_markdown(final), encoding="utf-8")
    return png, md


def run_readme(out_dir: str | Path, checkpoint: str | Path | None, root: str | Path, python: str) -> str:
    """The top of `summary.md`: the commands, run from `root` (the repository) with `python`, that resume this run
    from its `config.yaml` and evaluate and serve its last `checkpoint` (a `step-N` folder)."""
    out, py = Path(out_dir), short_path(python, root)
    config = short_path(out / "config.yaml", root)
    lines = [
        f"README (run from `{os.path.abspath(root)}`):",
        f"- resume: `{py} pipelines/progressive.py --config {config}`",
    ]
    if checkpoint:
        hf = short_path(Path(checkpoint) / "hf", root)
        evaluation = short_path(out / "eval", root)
        lines += [
            f"- evaluate {Path(checkpoint).name}: `{py} pipelines/evaluate.py --config {config} --model {hf} "
            f"--out {evaluation}`",
            f"- serve it: `{py} -m serve.app --config {config} --checkpoint {hf}`",
        ]
    return "\n".join(lines)


def _plot(records: list[dict], final: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 7), constrained_layout=True)
    _plot_before_after(axes.flat[6], final)
    axes.flat[7].axis("off")
    for ax, key in zip(axes.flat, CURVES):
        for stage in STAGES:
            points = [(r["global_step"], r[key]) for r in records if r["stage"] == stage and key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=stage, color=COLORS[stage])
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.legend(*axes.flat[5].get_legend_handles_labels(), loc="lower right")  # train/loss has every stage
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_before_after(ax, final: dict) -> None:
    """Bars: base, warm start (when evaluated) and final accuracy per mode (macro average over tasks) with 95 %
    intervals; chance as a line."""
    ax.set_title("before / after: accuracy % (95 % CI)")
    if "base" not in final or "final" not in final:
        ax.text(0.5, 0.5, "no before/after evaluation", ha="center", va="center", transform=ax.transAxes)
        return
    modes = [m for m in MODES if m in final["final"]]
    bars = [("base", "base", "tab:grey"), ("warmup", "warm start", "tab:olive"), ("final", "final", "tab:purple")]
    bars = [(key, label, color) for key, label, color in bars if key in final]
    width = 0.8 / len(bars)
    for n, (key, label, color) in enumerate(bars):
        values = [final[key][m]["average"] for m in modes]
        bounds = [final["intervals"][key][m]["average"] for m in modes]
        errors = [[v - lo for v, (lo, _) in zip(values, bounds)], [hi - v for v, (_, hi) in zip(values, bounds)]]
        xs = [i + (n - (len(bars) - 1) / 2) * width for i in range(len(modes))]
        ax.bar(xs, values, width, yerr=errors, capsize=4, label=label, color=color)
    chance = sum(final["chance"].values()) / max(len(final["chance"]), 1)
    ax.axhline(chance, color="grey", linestyle="--", label="chance")
    ax.set_xticks(range(len(modes)), modes)
    top = max(final["intervals"][key][m]["average"][1] for key, _, _ in bars for m in modes)
    ax.set_ylim(0, max(top, chance) * 1.3 + 1)  # headroom: the legend sits above the bars, not over them
    ax.legend(loc="upper center", ncol=len(bars) + 1, fontsize="small")


def _summary(records: list[dict]) -> str:
    lines = [
        "# Med-R³ run summary",
        "",
        "| stage | steps | reward: first → last third [95 % CI of the change] | accuracy first → last "
        "| format first → last "
        "| searches/traj | train loss first → last |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        rows = [r for r in records if r["stage"] == stage]
        if not rows:
            continue

        def span(key: str, rows=rows) -> str:
            if key not in rows[0]:
                return "–"
            return f"{rows[0][key]:.3f} → {rows[-1].get(key, 0):.3f}"

        searches = sum(r.get("rollout/searches_per_traj", 0) for r in rows) / len(rows)
        lines.append(
            f"| {stage} | {len(rows)} | {_thirds(rows, 'reward/total')} | {span('rollout/accuracy')} | "
            f"{span('rollout/format_rate')} | {searches:.2f} | {span('train/loss')} |"
        )
    total_time = sum(r.get("timing/step", 0) for r in records)
    lines += ["", f"{len(records)} steps, {total_time / 60:.1f} min of step time.", ""]
    return "\n".join(lines)


def _thirds(rows: list[dict], key: str) -> str:
    """Mean of `key` over the first and the last third of a stage's steps (a single step is noisy); for the reward,
    with the change's 95 % interval when the steps logged their groups' rewards."""
    values = [r[key] for r in rows if key in r]
    if not values:
        return "–"
    third = max(1, len(values) // 3)
    first, last = values[:third], values[-third:]
    text = f"{sum(first) / len(first):+.3f} → {sum(last) / len(last):+.3f}"
    groups = [r.get(GROUP_MEANS) for r in rows]
    if key != "reward/total" or len(rows) < 2 or not all(groups):
        return text
    low, high = change_interval(_flat(groups[:third]), _flat(groups[-third:]))
    return f"{text} [{low:+.2f}, {high:+.2f}]"


def change_interval(first: Sequence[float], last: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of mean(`last`) − mean(`first`), resampling each side's groups (a prompt's
    mean reward). One that holds 0 is a change the questions drawn and their samples could give alone: at 4 prompts
    a step, two runs of the same step on the same weights differed by 0.3 (docs/method.md §3)."""
    rng = random.Random(seed)
    return percentile_interval(
        statistics.fmean(rng.choices(last, k=len(last))) - statistics.fmean(rng.choices(first, k=len(first)))
        for _ in range(BOOTSTRAP_SAMPLES)
    )


def _flat(lists: Sequence[Sequence[float]]) -> list[float]:
    return [x for xs in lists for x in xs]
