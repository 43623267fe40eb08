"""The before/after comparison that ends every run: the base model and the final checkpoint (and, with
`run.warmup_eval`, the warm start's model) on the same fixed slice of held-out questions, with the same sampling
seeds, in both modes (no retrieval, retrieval-augmented).

Generation stays outside: `evaluate_slice` takes a `run_chunk(questions, search) -> trajectories` callable (the job's
own generator and search pools), so this module is Ray-free and unit-testable. Accuracies are in percent, with 95 %
bootstrap intervals over questions, and each task's chance level (the mean of 1 / options).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medr3.data import Question
from medr3.evaluation import EvalTask, load_task, question_accuracy, question_record
from medr3.rollout import Trajectory

RunChunk = Callable[[list[Question], bool], list[Trajectory]]
MODES = ("cot", "rag")
BOOTSTRAP_SAMPLES = 2000


def evaluate_slice(
    tasks: Sequence[EvalTask], limit: int, run_chunk: RunChunk, samples: list[dict] | None = None
) -> dict[str, dict[str, list[float]]]:
    """Per mode and task, each question's correctness (0/1) on the first `limit` questions of the task; one
    sample per question. `run_chunk` must return one trajectory per question, in order. `samples`, when given,
    receives one `sample_record` per question."""
    out: dict[str, dict[str, list[float]]] = {}
    for mode in MODES:
        for task in tasks:
            questions = load_task(task, limit)
            trajs = run_chunk(questions, mode == "rag")
            out.setdefault(mode, {})[task.name] = [question_accuracy(question_record([t]), "mean") for t in trajs]
            if samples is not None:
                samples += [sample_record(mode, task.name, t) for t in trajs]
    return out


def sample_record(mode: str, task: str, traj: Trajectory) -> dict:
    """What one evaluated response did, for `final_eval_samples.jsonl`: a user reads why a question was missed
    (no answer, cut at the length limit, a wrong option) without rerunning anything."""
    from medr3.protocol import check_format, parse

    q = traj.question
    answer = parse(traj.text).answer
    return {
        "mode": mode,
        "task": task,
        "id": q.id,
        "gold": q.answer_letter or q.answer_text,
        "answer": answer,
        "correct": question_accuracy(question_record([traj]), "mean") == 1.0,
        "format_ok": check_format(traj.text, traj.search_allowed, traj.self_document).ok,
        "searches": len(traj.searches),
        "finish_reason": traj.finish_reason,
        "response_tokens": len(traj.response_ids),
        "response": traj.text,
    }


def chance_level(tasks: Sequence[EvalTask], limit: int) -> dict[str, float]:
    """Accuracy in % of answering uniformly at random: the mean over questions of 1 / number of options."""
    out = {}
    for task in tasks:
        questions = load_task(task, limit)
        out[task.name] = 100 * sum(1 / max(len(q.options), 1) for q in questions) / max(len(questions), 1)
    return out


def bootstrap_interval(tasks: Sequence[Sequence[float]], seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval (in %) of the macro mean over `tasks` of each task's mean correctness,
    resampling every task's questions (one task: the interval of its accuracy)."""
    tasks = [t for t in tasks if t]
    if not tasks:
        return 0.0, 0.0
    rng = random.Random(seed)
    low, high = percentile_interval(
        sum(sum(rng.choices(t, k=len(t))) / len(t) for t in tasks) / len(tasks) for _ in range(BOOTSTRAP_SAMPLES)
    )
    return 100 * low, 100 * high


def percentile_interval(replicates: Iterable[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of bootstrap replicates: their 95 % percentile interval."""
    ordered = sorted(replicates)
    return ordered[int(0.025 * len(ordered))], ordered[int(0.975 * len(ordered)) - 1]


def summarize(per_question: dict[str, dict[str, list[float]]]) -> tuple[dict, dict]:
    """(`{mode: {task: acc %, "average": acc %}}`, `{mode: {task: [low, high]}}`); the average is the macro mean
    over tasks (each task counts once) and its interval bootstraps every task's questions jointly."""
    accuracy, intervals = {}, {}
    for mode, by_task in per_question.items():
        accuracy[mode] = {t: 100 * sum(c) / max(len(c), 1) for t, c in by_task.items()}
        accuracy[mode]["average"] = sum(accuracy[mode].values()) / max(len(by_task), 1)
        intervals[mode] = {t: list(bootstrap_interval([c])) for t, c in by_task.items()}
        intervals[mode]["average"] = list(bootstrap_interval(list(by_task.values())))
    return accuracy, intervals


def write_result(path: Path, key: str, per_question: dict[str, dict[str, list[float]]], chance: dict) -> dict:
    """Add `key` ("base", "warmup" or "final") to `final_eval.json` (kept whole: written to a temporary file and
    renamed): `{"base": {mode: {task: acc, "average": acc}}, "final": {…}, "chance": {task: acc}, "intervals":
    {key: …}, "per_question": {key: …}}`, accuracies in percent."""
    from medr3.atomic import write_text_atomic

    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    accuracy, intervals = summarize(per_question)
    data[key] = accuracy
    data["chance"] = chance
    data.setdefault("intervals", {})[key] = intervals
    data.setdefault("per_question", {})[key] = per_question
    write_text_atomic(path, json.dumps(data, indent=1))
    return data


def write_samples(path: Path, key: str, samples: Sequence[dict]) -> None:
    """Replace `key`'s lines in `final_eval_samples.jsonl` with `samples` (each tagged `"model": key`), whole."""
    from medr3.atomic import write_text_atomic

    kept = []
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line).get("model") != key]
    kept += [json.dumps({"model": key} | s) for s in samples]
    write_text_atomic(path, "\n".join(kept) + "\n")


# Bump when a change outside the fingerprinted settings changes what an evaluation returns (e.g. the rollout loop).
CACHE_VERSION = 1


def base_fingerprint(model_dir: str | Path, settings: dict) -> str:
    """A key for the base model's results: the bytes of every file of its folder and every setting that changes
    what it is asked or how it samples (`settings`: budgets, sampling, seeds, slice, retriever, prompt texts)."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode())
    for path in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
        with path.open("rb") as f:
            digest.update(path.name.encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:20]


@dataclass
class SliceResult:
    """One model's evaluation of the slice: `evaluate_slice`'s correctness, the per-question samples, the seconds it
    took, and the cache file it was read from (None when it ran now)."""

    per_question: dict[str, dict[str, list[float]]]
    samples: list[dict]
    seconds: float
    reused: Path | None = None


def evaluate_cached(tasks: Sequence[EvalTask], limit: int, run_chunk: RunChunk, cache: Path | None) -> SliceResult:
    """`evaluate_slice`, or what an earlier run stored in `cache` (a file named by `base_fingerprint`); a result
    computed now is stored there (whole, atomically) for the next run."""
    from medr3.atomic import write_text_atomic

    if cache is not None and cache.exists():
        data = json.loads(cache.read_text(encoding="utf-8"))
        return SliceResult(data["per_question"], data["samples"], data["seconds"], reused=cache)
    start, samples = time.perf_counter(), []
    per_question = evaluate_slice(tasks, limit, run_chunk, samples)
    result = SliceResult(per_question, samples, time.perf_counter() - start)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        stored = {"per_question": per_question, "samples": samples, "seconds": result.seconds}
        write_text_atomic(cache, json.dumps(stored))
    return result


def markdown(data: dict) -> str:
    """Base vs final per mode and task, with 95 % intervals and chance level; with a `warmup` evaluation, the warm
    start's model between them and the gain split into the warm start's and the GRPO stages'. A difference's interval
    is paired (it bootstraps the per-question differences), so it is narrower than the two accuracies' intervals."""
    if "base" not in data or "final" not in data:
        return ""
    warm = "warmup" in data
    head = "| task | chance % | base % [95 % CI] |" + (" warm start % [95 % CI] |" if warm else "")
    head += " final % [95 % CI] | Δ points [95 % CI] |" + (" Δ since warm start [95 % CI] |" if warm else "")
    lines = ["## Before / after (held-out questions, same seeds)", ""]
    for mode in MODES:
        if mode not in data["final"]:
            continue
        title = "no retrieval (cot)" if mode == "cot" else "retrieval-augmented (rag)"
        lines += [f"**{title}**", "", head, "|---|" + "---:|" * (head.count("|") - 2)]
        for task, final in data["final"][mode].items():
            base = data["base"][mode].get(task, 0.0)
            chance = data["chance"].get(task) if task != "average" else _mean(data["chance"].values())
            row = f"| {task} | {chance:.1f} | {base:.1f} {_ci(data, 'base', mode, task)} |"
            if warm:
                row += f" {data['warmup'][mode].get(task, 0.0):.1f} {_ci(data, 'warmup', mode, task)} |"
            row += f" {final:.1f} {_ci(data, 'final', mode, task)} |"
            row += f" {final - base:+.1f}{_gain_ci(data, 'base', mode, task)} |"
            if warm:
                gain = final - data["warmup"][mode].get(task, 0.0)
                row += f" {gain:+.1f}{_gain_ci(data, 'warmup', mode, task)} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def _gain_ci(data: dict, since: str, mode: str, task: str) -> str:
    """' [low, high]': the paired 95 % interval of final − `since` on the same questions ('' without them)."""
    per_question = data.get("per_question", {})
    try:
        by_task = {
            k: list(zip(per_question["final"][mode][k], per_question[since][mode][k], strict=True))
            for k in per_question["final"][mode]
        }
    except (KeyError, ValueError):
        return ""
    pairs = list(by_task.values()) if task == "average" else [by_task.get(task, [])]
    low, high = bootstrap_interval([[f - b for f, b in p] for p in pairs])
    return f" [{low:+.1f}, {high:+.1f}]"


def _ci(data: dict, key: str, mode: str, task: str) -> str:
    low, high = data.get("intervals", {}).get(key, {}).get(mode, {}).get(task, (0.0, 0.0))
    return f"[{low:.1f}, {high:.1f}]"


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)
