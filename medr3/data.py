"""Loaders for the bundled medical data, into one question record and one passage record.

Each loader yields good records and counts bad ones in a `LoadReport` (file, line or record key, reason): a malformed
record is skipped and reported, never a crash and never silent. Files may be plain, `.gz` or `.xz`.
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
MIRAGE_TASKS = ("medqa", "medmcqa", "pubmedqa", "bioasq", "mmlu")


@dataclass(frozen=True)
class Question:
    """A training or evaluation question, whatever file it came from.

    `options` maps letters to option texts (empty for open questions); `answer_letter` is None for open questions.
    `evidence_ids` are gold evidence document ids (PMIDs as strings) where known; `references` are verified
    reasoning texts (HuatuoGPT's Complex_CoT) for the clinical-consistency reward.
    """

    id: str
    question: str
    options: dict[str, str]
    answer_letter: str | None
    answer_text: str
    evidence_ids: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class Passage:
    """A corpus passage. `doc_id` is the id gold evidence refers to (the PMID for PubMed sources, else `id`)."""

    id: str
    title: str
    text: str
    source: str
    doc_id: str


@dataclass
class LoadReport:
    """What a loader read: how many records it kept and which it skipped, with where and why."""

    path: str
    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)

    def skip(self, location: str, reason: str) -> None:
        self.skipped.append((location, reason))
        log.debug("%s:%s: skipped record: %s", self.path, location, reason)

    def summary(self) -> str:
        return f"{self.path}: {self.loaded} loaded, {len(self.skipped)} skipped"


class DataError(ValueError):
    """A data file that cannot be read at all (missing, not JSON at the top level)."""


def open_text(path: str | Path):
    """Open a plain, .gz or .xz text file for reading."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def _read_json(path: str | Path):
    with open_text(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from err


def _jsonl(path: str | Path, report: LoadReport) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                report.skip(f"line {lineno}", f"not valid JSON ({err.msg})")
                continue
            if not isinstance(obj, dict):
                report.skip(f"line {lineno}", "not a JSON object")
                continue
            yield lineno, obj


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} missing or empty")
    return value.strip()


def _options(obj: dict, key: str = "options") -> dict[str, str]:
    options = obj.get(key)
    if not isinstance(options, dict) or len(options) < 2:
        raise ValueError(f"field {key!r} must map at least two letters to texts")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise ValueError(f"field {key!r} must map letters to strings")
    return {k.strip(): v.strip() for k, v in options.items()}


def _mcq(obj: dict, qid: str, source: str, answer_key: str = "answer", **extra) -> Question:
    options = _options(obj)
    letter = _text(obj, answer_key)
    if letter not in options:
        raise ValueError(f"answer {letter!r} is not one of the options {sorted(options)}")
    pmids = obj.get("PMID") or []
    if not isinstance(pmids, list):
        raise ValueError("field 'PMID' must be a list")
    return Question(
        id=qid,
        question=_text(obj, "question"),
        options=options,
        answer_letter=letter,
        answer_text=options[letter],
        evidence_ids=tuple(str(p) for p in pmids),
        source=source,
        **extra,
    )


def _collect(report: LoadReport, items: Iterator[tuple[str, Callable[[], Question]]], limit: int | None) -> list:
    out = []
    for location, build in items:
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(build())
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            report.skip(location, str(err))
    report.loaded = len(out)
    return out


def load_mirage(path, tasks=None, limit=None) -> tuple[list[Question], LoadReport]:
    """MIRAGE `benchmark.json` / `benchmark_with_pmid.json`: `{task: {qid: {question, options, answer, [PMID]}}}`."""
    report = LoadReport(str(path))
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of task -> items")
    tasks = tasks or [t for t in MIRAGE_TASKS if t in data]
    for task in tasks:
        if task not in data:
            raise DataError(f"{path}: no task {task!r} (has {sorted(data)})")

    def items():
        for task in tasks:
            for qid, obj in data[task].items():
                yield f"{task}/{qid}", lambda obj=obj, qid=qid, task=task: _mcq(obj, f"{task}:{qid}", f"mirage/{task}")

    return _collect(report, items(), limit), report


def load_headqa(path, limit=None, **_) -> tuple[list[Question], LoadReport]:
    """HEAD-QA English: `{exams: {name: {category, data: [{qid, qtext, ra, answers, image}]}}}`; skips images."""
    report = LoadReport(str(path))
    data = _read_json(path)
    exams = data.get("exams") if isinstance(data, dict) else None
    if not isinstance(exams, dict):
        raise DataError(f"{path}: expected {{'exams': {{...}}}}")

    def build(exam: str, category: str, obj: dict) -> Question:
        if obj.get("image"):
            raise ValueError("question refers to an image")
        answers = obj["answers"]
        options = {LETTERS[i]: a["atext"].strip() for i, a in enumerate(sorted(answers, key=lambda a: int(a["aid"])))}
        by_aid = {str(a["aid"]): LETTERS[i] for i, a in enumerate(sorted(answers, key=lambda a: int(a["aid"])))}
        letter = by_aid.get(str(obj["ra"]))
        if letter is None:
            raise ValueError(f"right answer {obj['ra']!r} is not among the answers")
        qtext = obj["qtext"]
        if not isinstance(qtext, str) or not qtext.strip():
            raise ValueError("field 'qtext' missing or empty")
        return Question(
            f"headqa:{exam}:{obj['qid']}", qtext.strip(), options, letter, options[letter], source=f"headqa/{category}"
        )

    def items():
        for exam, block in exams.items():
            for i, obj in enumerate(block.get("data", [])):
                yield f"{exam}/{i}", lambda e=exam, c=block.get("category", ""), o=obj: build(e, c, o)

    return _collect(report, items(), limit), report


def load_pubmedqa(path, limit=None, **_) -> tuple[list[Question], LoadReport]:
    """PubMedQA PQA-L jsonl in the MIRAGE item schema plus `id` and `PMID`."""
    report = LoadReport(str(path))

    def items():
        for lineno, obj in _jsonl(path, report):
            yield f"line {lineno}", lambda o=obj: _mcq(o, f"pubmedqa:{_text(o, 'id')}", "pubmedqa")

    return _collect(report, items(), limit), report


def load_huatuo(path, limit=None, **_) -> tuple[list[Question], LoadReport]:
    """HuatuoGPT-o1 demo: MCQ plus an open rewrite and a reference chain of thought (`Complex_CoT`)."""
    report = LoadReport(str(path))
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of items")

    def build(i: int, obj: dict) -> Question:
        return _mcq(obj, f"huatuo:{i}", "huatuo", answer_key="answer_idx", references=(_text(obj, "Complex_CoT"),))

    return _collect(report, ((f"item {i}", lambda i=i, o=o: build(i, o)) for i, o in enumerate(data)), limit), report


LOADERS: dict[str, Callable[..., tuple[list[Question], LoadReport]]] = {
    "mirage": load_mirage,
    "headqa": load_headqa,
    "pubmedqa": load_pubmedqa,
    "huatuo": load_huatuo,
}


def load_dataset(spec) -> tuple[list[Question], LoadReport]:
    """Load a `config.DatasetSpec`."""
    kwargs = {"limit": spec.limit}
    if spec.kind == "mirage":
        kwargs["tasks"] = spec.tasks
    return LOADERS[spec.kind](spec.path, **kwargs)


def corpus_files(path: str | Path) -> list[Path]:
    """A corpus is one jsonl file or a folder of them (one per source, as bundled under data/corpus)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.xz")))
        if not files:
            raise DataError(f"{path}: no *.jsonl[.gz|.xz] files in the corpus folder")
        return files
    if not path.is_file():
        raise DataError(f"{path}: corpus not found")
    return [path]


def iter_corpus(path: str | Path, reports: list[LoadReport] | None = None) -> Iterator[Passage]:
    """Yield passages `{id, source, title, text, [pmid]}` from a corpus file or folder, skipping bad lines."""
    for file in corpus_files(path):
        report = LoadReport(str(file))
        for lineno, obj in _jsonl(file, report):
            try:
                pid, text = _text(obj, "id"), _text(obj, "text")
                title = obj.get("title") or ""
                if not isinstance(title, str):
                    raise ValueError("field 'title' must be a string")
                pmid = obj.get("pmid")
                yield Passage(pid, title.strip(), text, str(obj.get("source") or ""), str(pmid) if pmid else pid)
                report.loaded += 1
            except ValueError as err:
                report.skip(f"line {lineno}", str(err))
        if reports is not None:
            reports.append(report)
