"""Evaluation on held-out medical benchmarks: the tasks, scoring over n samples (majority vote or mean), per-task and
average tables (JSON and Markdown) and a resumable partial-results file.

Generation and search stay outside: `evaluate_task` takes a `run_chunk(questions, search) -> trajectories` callable,
so `pipelines/evaluate.py` drives it with Ray actor pools and unit tests with fakes. Each question's record keeps
every sample's answer, so the aggregate (majority or mean) is chosen when the report is built, not when generating.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medr3.atomic import write_text_atomic
from medr3.config import DatasetSpec
from medr3.data import (
    DataError,
    Question,
    file_stem,
    is_mirage_layout,
    load_dataset,
    mirage_tasks,
    question_kind,
    read_json,
)
from medr3.protocol import check_format, extract_answer, is_correct, parse
from medr3.rewards.text import normalize
from medr3.rollout import Trajectory

MIRAGE_FILE = "eval/mirage/benchmark_with_pmid.json.xz"
MODES = {"cot": "no retrieval (chain of thought)", "rag": "retrieval-augmented (Med-R³ protocol)"}
AGGREGATES = ("majority", "mean")

# The bundled corpus holds these tasks' gold evidence (data/README.md, "Leakage warning").
ORACLE_TASKS = ("pubmedqa", "bioasq", "pubmedqa_nontest")
ORACLE_SOURCES = ("bioasq_snippet", "pubmedqa_abstract")
ORACLE_CAVEAT = (
    "Oracle pool: the bundled corpus holds the gold evidence of PubMedQA* and BioASQ-Y/N (and of the PubMedQA "
    "non-test items) in its bioasq_snippet and pubmedqa_abstract sources; BM25 alone finds the gold PMID in the top "
    "10 for 499/500 PubMedQA* and 555/618 BioASQ questions. Retrieval-augmented accuracy on these tasks (marked †) "
    "is an oracle-pool figure, not comparable with MedRAG's (data/README.md, 'Leakage warning'); leave the two "
    "sources out (retriever.sources) to score them fairly."
)


class EvaluationError(RuntimeError):
    """An evaluation that cannot go on as asked (e.g. a partial-results file from different settings)."""


@dataclass(frozen=True)
class EvalTask:
    """One benchmark: `name` keys the reports, `label` is what tables show, `spec` says how to load it."""

    name: str
    label: str
    spec: DatasetSpec


def eval_tasks(data_dir: str | Path) -> dict[str, EvalTask]:
    """MIRAGE's five tasks, HEAD-QA dev and PubMedQA PQA-L non-test, loaded from `data_dir` (the bundled data/)."""
    data = Path(data_dir)
    mirage = str(data / MIRAGE_FILE)
    labels = {"medqa": "MedQA-US", "medmcqa": "MedMCQA", "pubmedqa": "PubMedQA*", "bioasq": "BioASQ-Y/N",
              "mmlu": "MMLU-Med"}  # fmt: skip
    tasks = {name: EvalTask(name, label, DatasetSpec(kind="mirage", path=mirage, tasks=[name]))
             for name, label in labels.items()}  # fmt: skip
    tasks["headqa_dev"] = EvalTask(
        "headqa_dev", "HEAD-QA dev", DatasetSpec(kind="headqa", path=str(data / "train/headqa_en/dev_HEAD_EN.json.xz"))
    )
    tasks["pubmedqa_nontest"] = EvalTask(
        "pubmedqa_nontest",
        "PubMedQA non-test",
        DatasetSpec(kind="pubmedqa", path=str(data / "train/pubmedqa_pqal_nontest500.jsonl.xz")),
    )
    return tasks


def dataset_tasks(path: str | Path) -> dict[str, EvalTask]:
    """The tasks of a user's question file (`medr3.data`: `jsonl`, or `json` records): one named after the file's
    stem, or, for a file in MIRAGE's layout, one per task inside it, named as there."""
    path = Path(path)
    kind = question_kind(path)
    if kind == "json":
        data = read_json(path)
        if is_mirage_layout(data):
            return {t: EvalTask(t, t, DatasetSpec(kind="json", path=str(path), tasks=[t])) for t in mirage_tasks(data)}
    elif not path.is_file():
        raise DataError(f"{path}: file not found")
    name = file_stem(path)
    return {name: EvalTask(name, name, DatasetSpec(kind=kind, path=str(path)))}


SLICE_SEED = 0  # every evaluation with the same `limit` sees the same questions: base and final, run after run


def load_task(task: EvalTask, limit: int | None = None) -> list[Question]:
    """The task's questions (malformed records are skipped and counted by the loader); with `limit`, a fixed seeded
    sample of that many, kept in file order. Not the first `limit`: MIRAGE lists PubMedQA* sorted by answer, so its
    first 276 questions are all "yes" and a prefix would measure only a model's bias towards "yes"."""
    questions, _ = load_dataset(task.spec)
    if limit is None or limit >= len(questions):
        return questions
    keep = sorted(random.Random(f"{SLICE_SEED}/{task.name}").sample(range(len(questions)), limit))
    return [questions[i] for i in keep]


# --- scoring -------------------------------------------------------------------------------------------------------


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer that is not None; a tie goes to the answer the earliest sample gave."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def question_record(trajs: Sequence[Trajectory]) -> dict:
    """One question's outcome over its samples: each sample's answer (the option letter, None when it named no single
    option; for an open question its normalised text, None when it gave none), whether each was right
    (`protocol.is_correct`), whether each was well-formed, and each one's number of searches."""
    q = trajs[0].question
    answers = [parse(t.text).answer for t in trajs]
    return {
        "id": q.id,
        "gold": q.answer_letter or q.answer_text,
        "answers": [_answer_key(a, q) for a in answers],
        "correct": [is_correct(a, q) for a in answers],
        "format": [check_format(t.text, t.search_allowed, t.self_document).ok for t in trajs],
        "searches": [len(t.searches) for t in trajs],
    }


def _answer_key(answer: str | None, q: Question) -> str | None:
    """What majority voting compares: the option letter, or an open answer's normalised text."""
    if q.options:
        return extract_answer(answer, q.options)[0]
    return normalize(answer) if answer and answer.strip() else None


def question_accuracy(record: dict, aggregate: str) -> float:
    """majority: 1.0 when the majority answer is right, else 0.0; mean: the fraction of right samples."""
    answers = record["answers"]
    # Records saved before "correct" existed hold option letters only.
    correct = record.get("correct") or [a is not None and a == record["gold"] for a in answers]
    if aggregate == "majority":
        voted = majority_vote(answers)
        return float(voted is not None and correct[answers.index(voted)])
    if aggregate == "mean":
        return sum(correct) / len(correct)
    raise ValueError(f"unknown aggregate {aggregate!r} (known: {AGGREGATES})")


def summarize(records: Sequence[dict], aggregate: str) -> dict:
    """Accuracy, format rate (over samples) and searches per question (mean over samples) of one task."""
    n = len(records)
    if not n:
        return {"n": 0, "accuracy": 0.0, "format_rate": 0.0, "searches_per_question": 0.0}
    return {
        "n": n,
        "accuracy": sum(question_accuracy(r, aggregate) for r in records) / n,
        "format_rate": sum(sum(r["format"]) / len(r["format"]) for r in records) / n,
        "searches_per_question": sum(sum(r["searches"]) / len(r["searches"]) for r in records) / n,
    }


def average(summaries: Iterable[dict]) -> dict:
    """Macro average over tasks (as MIRAGE reports it: each task counts once, whatever its size)."""
    rows = [s for s in summaries if s["n"]]
    keys = ("accuracy", "format_rate", "searches_per_question")
    out = {k: sum(s[k] for s in rows) / len(rows) if rows else 0.0 for k in keys}
    return {"n": sum(s["n"] for s in rows), **out}


def build_report(records: dict[str, dict[str, list[dict]]], tasks: dict[str, EvalTask], settings: dict) -> dict:
    """`records[mode][task]` → `{settings, modes: {mode: {tasks: {task: summary}, average}}}`."""
    aggregate = settings["aggregate"]
    modes = {}
    for mode, by_task in records.items():
        summaries = {n: {"label": tasks[n].label, **summarize(rows, aggregate)} for n, rows in by_task.items()}
        modes[mode] = {"tasks": summaries, "average": average(summaries.values())}
    sources = settings.get("retriever_sources")
    oracle_pool = sources is None or bool(set(sources) & set(ORACLE_SOURCES))
    oracle = oracle_pool and any(t in ORACLE_TASKS for t in records.get("rag", {}))
    return {"settings": settings, "modes": modes, "oracle_caveat": ORACLE_CAVEAT if oracle else None}


def markdown(report: dict) -> str:
    """One table per mode: task, n, accuracy and format rate in %, searches per question; then the average."""
    s = report["settings"]
    lines = [
        f"# Evaluation of `{s['model']}`",
        "",
        f"{s['n']} sample(s) per question, {s['aggregate']} over samples, temperature {s['temperature']}, "
        f"top-p {s['top_p']}, at most {s['max_response_tokens']} response tokens.",
    ]
    for mode, block in report["modes"].items():
        lines += ["", f"## {MODES.get(mode, mode)}", "", "| task | n | accuracy % | format % | searches / question |"]
        lines.append("|---|---:|---:|---:|---:|")
        for name, row in block["tasks"].items():
            mark = " †" if report.get("oracle_caveat") and mode == "rag" and name in ORACLE_TASKS else ""
            lines.append(_row(row["label"] + mark, row))
        lines.append(_row("**average**", block["average"]))
    if report.get("oracle_caveat"):
        lines += ["", f"† {report['oracle_caveat']}"]
    return "\n".join(lines) + "\n"


def _row(label: str, row: dict) -> str:
    return (
        f"| {label} | {row['n']} | {100 * row['accuracy']:.1f} | {100 * row['format_rate']:.1f} "
        f"| {row['searches_per_question']:.2f} |"
    )


# --- resumable results ---------------------------------------------------------------------------------------------


class PartialResults:
    """`<out>/partial.json`: the generation settings and every finished question's record, by mode and task.

    Rewritten atomically after each chunk, so a killed run loses at most the chunk in flight, and a rerun skips every
    question already recorded. Records from different generation settings are never mixed: a settings mismatch is an
    error unless `fresh` starts over.
    """

    def __init__(self, path: str | Path, settings: dict, fresh: bool = False):
        self.path = Path(path)
        self.settings = settings
        self.results: dict[str, dict[str, dict[str, dict]]] = {}
        if self.path.exists() and not fresh:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            if saved["settings"] != settings:
                changed = sorted(k for k in settings.keys() | saved["settings"].keys()
                                 if settings.get(k) != saved["settings"].get(k))  # fmt: skip
                raise EvaluationError(
                    f"{self.path}: partial results were generated with other settings ({', '.join(changed)}); "
                    "rerun with --fresh or another --out"
                )
            self.results = saved["results"]

    def done(self, mode: str, task: str) -> dict[str, dict]:
        """Records already finished for `mode`/`task`, by question id."""
        return self.results.get(mode, {}).get(task, {})

    def add(self, mode: str, task: str, records: Sequence[dict]) -> None:
        by_id = self.results.setdefault(mode, {}).setdefault(task, {})
        by_id.update({r["id"]: r for r in records})
        write_text_atomic(self.path, json.dumps({"settings": self.settings, "results": self.results}))

    def records(self, mode: str, task: str, questions: Sequence[Question]) -> list[dict]:
        """The records of exactly these questions, in their order (a smaller --limit reports a prefix)."""
        done = self.done(mode, task)
        return [done[q.id] for q in questions if q.id in done]


def pending_chunks(questions: Sequence[Question], done: dict, chunk_size: int) -> list[list[Question]]:
    """The questions not yet recorded, in chunks of `chunk_size`."""
    todo = [q for q in questions if q.id not in done]
    return [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]


RunChunk = Callable[[list[Question], bool], list[Trajectory]]


def evaluate_task(
    mode: str,
    task: str,
    questions: Sequence[Question],
    run_chunk: RunChunk,
    partial: PartialResults,
    chunk_size: int,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> list[dict]:
    """Generate for every pending question of one task in chunks, recording each chunk as it finishes; returns the
    task's records. `run_chunk` returns n trajectories per question, question-major (as `Rollout.run` does)."""
    for chunk in pending_chunks(questions, partial.done(mode, task), chunk_size):
        trajs = run_chunk(chunk, mode == "rag")
        n = len(trajs) // len(chunk)
        partial.add(mode, task, [question_record(trajs[i * n : (i + 1) * n]) for i in range(len(chunk))])
        on_chunk(len(chunk))
    return partial.records(mode, task, questions)
