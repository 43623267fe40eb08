"""Several models evaluated on the same questions with the same seeds, in one report: per mode, each model's accuracy
with its 95 % bootstrap interval, and its paired difference against the first model with a paired bootstrap interval;
a Markdown table per mode and a bar chart.

Pure logic over `medr3.evaluation` question records (`records[mode][task]`, one per question), so unit tests build
records by hand; `pipelines/evaluate.py --model A --model B …` generates them. Accuracies are macro means over tasks
(each task counts once, as MIRAGE averages) in percent. A paired interval resamples questions and takes both models'
answers to each resampled question, so a difference that two overlapping intervals hide can still be told from 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from medr3.evaluation import MODES, question_accuracy
from medr3.final_eval import bootstrap_interval

Records = Mapping[str, Mapping[str, Sequence[dict]]]  # mode -> task -> question records


def correctness(records: Records, aggregate: str) -> dict[str, dict[str, dict[str, float]]]:
    """`{mode: {task: {question id: correctness in [0, 1]}}}` (`question_accuracy` under `aggregate`)."""
    return {
        mode: {task: {r["id"]: question_accuracy(r, aggregate) for r in rows} for task, rows in by_task.items()}
        for mode, by_task in records.items()
    }


def compare(models: Mapping[str, Records], aggregate: str) -> dict:
    """Compare `models` (label -> records, the first is the baseline) on the modes and tasks all of them have.

    Returns `{"baseline": label, "modes": {mode: {"tasks": {task: n questions}, "models": {label: {"tasks": {task:
    acc}, "average": acc, "interval": [lo, hi], "difference": d, "difference_interval": [lo, hi]}}}}}` in percent
    (the baseline's own difference is 0 with interval [0, 0]). Raises ValueError when the models were not evaluated
    on the same questions of a task.
    """
    labels = list(models)
    if not labels:
        raise ValueError("no models to compare")
    scored = {label: correctness(records, aggregate) for label, records in models.items()}
    baseline = scored[labels[0]]
    out = {"baseline": labels[0], "modes": {}}
    for mode in [m for m in baseline if all(m in s for s in scored.values())]:
        tasks = [t for t in baseline[mode] if all(t in s[mode] for s in scored.values())]
        for task in tasks:
            ids = {label: set(s[mode][task]) for label, s in scored.items()}
            if any(i != ids[labels[0]] for i in ids.values()):
                raise ValueError(f"{mode}/{task}: the models were evaluated on different questions")
        order = {t: list(baseline[mode][t]) for t in tasks}  # question ids, in the baseline's order
        base = [[baseline[mode][t][q] for q in order[t]] for t in tasks]
        rows = {}
        for label, s in scored.items():
            mine = [[s[mode][t][q] for q in order[t]] for t in tasks]
            paired = [[b - a for a, b in zip(xs, ys, strict=True)] for xs, ys in zip(base, mine, strict=True)]
            rows[label] = {
                "tasks": {t: _percent(c) for t, c in zip(tasks, mine, strict=True)},
                "average": _macro(mine),
                "interval": list(bootstrap_interval(mine)),
                "difference": _macro(mine) - _macro(base),
                "difference_interval": list(bootstrap_interval(paired)),
            }
        out["modes"][mode] = {"tasks": {t: len(order[t]) for t in tasks}, "models": rows}
    return out


def _percent(values: Sequence[float]) -> float:
    return 100 * sum(values) / len(values) if values else 0.0


def _macro(tasks: Sequence[Sequence[float]]) -> float:
    scored = [t for t in tasks if t]
    return sum(_percent(t) for t in scored) / len(scored) if scored else 0.0


def markdown(comparison: dict, models: Mapping[str, str], settings: dict, note: str | None = None) -> str:
    """One table per mode: each model's per-task and average accuracy with its interval, and its difference from the
    baseline with the paired interval (`*` where that interval leaves out 0). `models` maps label -> model path."""
    base = comparison["baseline"]
    lines = [
        f"# Comparison of {len(models)} models",
        "",
        *[f"- `{label}`: `{path}`" for label, path in models.items()],
        "",
        f"Same questions and sampling seeds for every model: {settings['n']} sample(s) per question, "
        f"{settings['aggregate']} over samples, temperature {settings['temperature']}, top-p {settings['top_p']}, "
        f"at most {settings['max_response_tokens']} response tokens. Accuracy in %, averaged over tasks; intervals "
        f"are 95 % bootstrap intervals over questions; Δ is the difference from `{base}` in points, its interval "
        "paired (both models' answers to the same resampled questions); * marks a Δ whose interval leaves out 0.",
    ]
    for mode, block in comparison["modes"].items():
        tasks = block["tasks"]
        header = " | ".join(f"{t} (n={n})" for t, n in tasks.items())
        lines += ["", f"## {MODES.get(mode, mode)}", "", f"| model | {header} | average [95 % CI] | Δ [95 % CI] |"]
        lines.append("|---|" + "---:|" * len(tasks) + "---:|---:|")
        for label, row in block["models"].items():
            cells = " | ".join(f"{row['tasks'][t]:.1f}" for t in tasks)
            lo, hi = row["interval"]
            if label == base:
                delta = "–"
            else:
                dlo, dhi = row["difference_interval"]
                star = "*" if dlo > 0 or dhi < 0 else ""
                delta = f"{row['difference']:+.1f}{star} [{dlo:+.1f}, {dhi:+.1f}]"
            lines.append(f"| {label} | {cells} | {row['average']:.1f} [{lo:.1f}, {hi:.1f}] | {delta} |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot(comparison: dict, path: str | Path) -> Path:
    """`report.png`: per mode, one bar per model (average accuracy %) with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(comparison["modes"])
    fig, axes = plt.subplots(1, max(len(modes), 1), figsize=(5 * max(len(modes), 1), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=False):
        rows = comparison["modes"][mode]["models"]
        labels, values = list(rows), [r["average"] for r in rows.values()]
        errors = [[v - r["interval"][0] for v, r in zip(values, rows.values(), strict=True)],
                  [r["interval"][1] - v for v, r in zip(values, rows.values(), strict=True)]]  # fmt: skip
        bars = ax.bar(range(len(labels)), values, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(labels))])
        ax.bar_label(bars, [f"{v:.1f}" for v in values], padding=2)
        ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right")
        ax.set_title(f"{mode}: accuracy % (95 % CI)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
