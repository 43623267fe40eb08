"""Loaders for the bundled medical data and a user's own, into one question record and one passage record.

Each loader yields good records and counts bad ones in a `LoadReport` (file, line or record key, reason): a malformed
record is skipped and reported, never a crash and never silent. Files may be plain, `.gz` or `.xz`.

A user's questions (`jsonl` / `json` kinds) are records
`{"id", "question", "options"?: {"A": text, …} | [text, …], "answer": letter | text, "evidence_ids"?: [id, …],
"reference"?: text}`: one per line (`jsonl`), or a JSON list of them (`json`); a `json` file in MIRAGE's layout
`{task: {id: {question, options, answer}}}` is read as MIRAGE. Without options a question is open: its answer is
scored on normalised text (`protocol.is_correct`). A user's corpus is jsonl passages `{id, text, title?, source?}`
whose ids must be unique (`iter_corpus`).
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

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
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (location, "id -> new id"): repeated corpus ids

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


def read_json(path: str | Path):
    """A whole (possibly compressed) JSON file; DataError naming the line where it is not JSON."""
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


def load_mirage(path, tasks=None, limit=None, data=None) -> tuple[list[Question], LoadReport]:
    """MIRAGE `benchmark.json` / `benchmark_with_pmid.json`: `{task: {qid: {question, options, answer, [PMID]}}}`,
    or any file in that layout. Default tasks: all of the file's (MIRAGE's five in MIRAGE's order first)."""
    report = LoadReport(str(path))
    data = read_json(path) if data is None else data
    if not is_mirage_layout(data):
        raise DataError(f"{path}: expected MIRAGE's layout, a mapping of task -> {{id: item}}")
    tasks = tasks or mirage_tasks(data)
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
    data = read_json(path)
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
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of items")

    def build(i: int, obj: dict) -> Question:
        return _mcq(obj, f"huatuo:{i}", "huatuo", answer_key="answer_idx", references=(_text(obj, "Complex_CoT"),))

    return _collect(report, ((f"item {i}", lambda i=i, o=o: build(i, o)) for i, o in enumerate(data)), limit), report


def is_mirage_layout(data) -> bool:
    """Whether parsed JSON is MIRAGE's `{task: {id: item}}`: a non-empty mapping of mappings (a malformed item is
    the loader's to skip)."""
    return isinstance(data, dict) and bool(data) and all(isinstance(block, dict) for block in data.values())


def mirage_tasks(data: dict) -> list[str]:
    """The tasks of a MIRAGE-layout mapping: MIRAGE's own in its order, then any others in the file's order."""
    return [t for t in MIRAGE_TASKS if t in data] + [t for t in data if t not in MIRAGE_TASKS]


def file_stem(path: str | Path) -> str:
    """A data file's name without its compression and data suffixes: `my_questions.jsonl.xz` -> `my_questions`."""
    name = Path(path).name
    for suffix in (".gz", ".xz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def question_kind(path: str | Path) -> str:
    """The loader kind of a user's question file by its name: `jsonl` or `json` (either may be .gz / .xz)."""
    name = Path(path).name.removesuffix(".gz").removesuffix(".xz")
    for kind in ("jsonl", "json"):
        if name.endswith(f".{kind}"):
            return kind
    raise DataError(f"{path}: a question file must be .jsonl or .json (optionally .gz / .xz)")


def _user_question(obj: dict, stem: str) -> Question:
    """One record of a user's question file (module docstring), from the file named `stem`: id `<stem>:<id>`."""
    qid = obj.get("id")
    if isinstance(qid, bool) or not isinstance(qid, str | int) or not str(qid).strip():
        raise ValueError("field 'id' missing or not a string / integer")
    options = obj.get("options") or {}
    if isinstance(options, list):
        if not all(isinstance(o, str) for o in options) or len(options) > len(LETTERS):
            raise ValueError(f"field 'options' must be a list of at most {len(LETTERS)} strings")
        options = dict(zip(LETTERS, options))
    if options:
        options = _options({"options": options})
        if not all(letter in LETTERS for letter in options):
            raise ValueError(f"option keys must be letters A–{LETTERS[-1]} (got {sorted(options)})")
    answer = obj.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)  # an open question's numeric answer
    answer = _text({"answer": answer}, "answer")
    letter = None
    if options:
        by_text = {" ".join(t.lower().split()): k for k, t in options.items()}
        letter = answer.upper() if answer.upper() in options else by_text.get(" ".join(answer.lower().split()))
        if letter is None:
            raise ValueError(f"answer {answer!r} is neither an option letter {sorted(options)} nor an option's text")
    evidence = obj.get("evidence_ids") or []
    if not isinstance(evidence, list) or not all(isinstance(e, str | int) for e in evidence):
        raise ValueError("field 'evidence_ids' must be a list of ids")
    reference = obj.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ValueError("field 'reference' must be a string")
    return Question(
        id=f"{stem}:{str(qid).strip()}",
        question=_text(obj, "question"),
        options=options,
        answer_letter=letter,
        answer_text=options[letter] if letter else answer,
        evidence_ids=tuple(str(e) for e in evidence),
        references=(reference.strip(),) if reference and reference.strip() else (),
        source=stem,
    )


def _user_questions(path, report: LoadReport, records: Iterator[tuple[str, dict]], limit: int | None) -> list:
    """`_user_question` over `(location, record)` pairs; a repeated id is skipped, naming the first one's place."""
    stem, first_at = file_stem(path), {}

    def build(location: str, obj: dict) -> Question:
        q = _user_question(obj, stem)
        if q.id in first_at:
            raise ValueError(f"duplicate id {q.id.split(':', 1)[1]!r} (first at {first_at[q.id]})")
        first_at[q.id] = location
        return q

    return _collect(report, ((loc, lambda loc=loc, o=obj: build(loc, o)) for loc, obj in records), limit)


def load_jsonl(path, limit=None, **_) -> tuple[list[Question], LoadReport]:
    """A user's questions, one JSON record per line (module docstring); ids become `<file stem>:<id>`."""
    report = LoadReport(str(path))
    records = ((f"line {lineno}", obj) for lineno, obj in _jsonl(path, report))
    return _user_questions(path, report, records, limit), report


def load_json(path, tasks=None, limit=None) -> tuple[list[Question], LoadReport]:
    """A user's questions as one JSON list of records (module docstring), or a file in MIRAGE's layout (`tasks`
    picks among its tasks, as for `load_mirage`)."""
    data = read_json(path)
    if isinstance(data, dict) and is_mirage_layout(data):
        return load_mirage(path, tasks, limit, data=data)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of question records or MIRAGE's {{task: {{id: item}}}} layout")
    report = LoadReport(str(path))
    records = []
    for i, obj in enumerate(data):
        if isinstance(obj, dict):
            records.append((f"item {i}", obj))
        else:
            report.skip(f"item {i}", "not a JSON object")
    return _user_questions(path, report, iter(records), limit), report


LOADERS: dict[str, Callable[..., tuple[list[Question], LoadReport]]] = {
    "mirage": load_mirage,
    "headqa": load_headqa,
    "pubmedqa": load_pubmedqa,
    "huatuo": load_huatuo,
    "jsonl": load_jsonl,
    "json": load_json,
}


def load_dataset(spec) -> tuple[list[Question], LoadReport]:
    """Load a `config.DatasetSpec`."""
    kwargs = {"limit": spec.limit}
    if spec.kind in ("mirage", "json"):
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


# MedQuAD's collections by the host of a page's url. MedQuAD numbers questions per collection, so the bundled file
# repeats ids across them (medquad:0000004-1 names seven pages); the collection goes into the id.
MEDQUAD_COLLECTIONS = {
    "www.cancer.gov": "cancergov",
    "rarediseases.info.nih.gov": "gard",
    "ghr.nlm.nih.gov": "ghr",
    "www.nlm.nih.gov": "medlineplus",
    "www.niddk.nih.gov": "niddk",
    "www.ninds.nih.gov": "ninds",
    "nihseniorhealth.gov": "seniorhealth",
    "www.nhlbi.nih.gov": "nhlbi",
    "www.cdc.gov": "cdc",
}


def _medquad_id(pid: str, obj: dict) -> str | None:
    """A bundled MedQuAD passage's unique id `medquad:<collection>:<number>`, None for any other passage."""
    url = obj.get("url")
    if obj.get("source") != "medquad" or not pid.startswith("medquad:") or not isinstance(url, str):
        return None
    host = urlparse(url).netloc
    collection = MEDQUAD_COLLECTIONS.get(host) or host.removeprefix("www.").split(".")[0]
    return f"medquad:{collection}:{pid.removeprefix('medquad:')}"


def iter_corpus(
    path: str | Path, reports: list[LoadReport] | None = None, dedupe_ids: bool = False
) -> Iterator[Passage]:
    """Yield passages `{id, source, title, text, [pmid]}` from a corpus file or folder, skipping bad lines.

    `source` defaults to the file's stem. Passage ids must be unique over the whole corpus, since a search result's
    `doc_id` names one passage: a repeated id raises DataError once every file is read, naming each repeat's file and
    line and where the id first appeared; with `dedupe_ids` a repeat is renamed `<id>~2`, `<id>~3`, … instead
    (recorded in its report's `renamed`). The bundled MedQuAD gets ids with its collection in them
    (`medquad:gard:0000004-1`); its few repeats within a collection (one CancerGov page per subtype) are numbered.
    """
    first_at: dict[str, str] = {}
    repeats: list[str] = []
    for file in corpus_files(path):
        report = LoadReport(str(file))
        for lineno, obj in _jsonl(file, report):
            try:
                pid, text = _text(obj, "id"), _text(obj, "text")
                title = obj.get("title") or ""
                if not isinstance(title, str):
                    raise ValueError("field 'title' must be a string")
            except ValueError as err:
                report.skip(f"line {lineno}", str(err))
                continue
            medquad = _medquad_id(pid, obj)
            pid, where = medquad or pid, f"{file}:{lineno}"
            if pid in first_at:
                if not (dedupe_ids or medquad):
                    repeats.append(f"{where}: id {pid!r} (first at {first_at[pid]})")
                    continue
                n = 2
                while f"{pid}~{n}" in first_at:
                    n += 1
                report.renamed.append((f"line {lineno}", f"{pid} -> {pid}~{n}"))
                pid = f"{pid}~{n}"
            first_at[pid] = where
            pmid = obj.get("pmid")
            source = str(obj.get("source") or file_stem(file))
            yield Passage(pid, title.strip(), text, source, str(pmid) if pmid else pid)
            report.loaded += 1
        if reports is not None:
            reports.append(report)
    if repeats:
        shown = "\n  ".join(repeats[:10]) + (f"\n  … and {len(repeats) - 10} more" if len(repeats) > 10 else "")
        raise DataError(
            f"{path}: {len(repeats)} repeated passage id(s); a search result's doc_id must name one passage:\n  "
            f"{shown}\nmake them unique, or pass --dedupe-ids to pipelines/index_corpus.py to rename repeats "
            "<id>~2, <id>~3, …"
        )
