import json
import lzma

import pytest

from medr3.data import (
    DataError,
    iter_corpus,
    load_headqa,
    load_huatuo,
    load_mirage,
    load_pubmedqa,
)

from .conftest import DATA

MIRAGE = DATA / "eval/mirage/benchmark_with_pmid.json.xz"


def test_mirage_loads_all_five_tasks_with_gold_pmids():
    questions, report = load_mirage(MIRAGE)
    assert report.loaded == len(questions) == 7663 and not report.skipped
    by_task = {}
    for q in questions:
        by_task.setdefault(q.source, []).append(q)
    assert {t: len(v) for t, v in by_task.items()} == {
        "mirage/medqa": 1273,
        "mirage/medmcqa": 4183,
        "mirage/pubmedqa": 500,
        "mirage/bioasq": 618,
        "mirage/mmlu": 1089,
    }
    assert all(q.evidence_ids for q in by_task["mirage/pubmedqa"])
    q = by_task["mirage/medmcqa"][0]
    assert q.answer_letter in q.options and q.answer_text == q.options[q.answer_letter]


def test_mirage_task_selection():
    questions, _ = load_mirage(MIRAGE, tasks=["bioasq"])
    assert len(questions) == 618 and set(questions[0].options) == {"A", "B"}


def test_headqa_skips_image_questions_and_counts_them():
    questions, report = load_headqa(DATA / "train/headqa_en/train_HEAD_EN.json.xz")
    assert report.loaded == len(questions) > 2000
    assert report.skipped and all("image" in reason for _, reason in report.skipped)
    q = questions[0]
    assert q.answer_letter in q.options and q.id.startswith("headqa:")


def test_pubmedqa_nontest_is_disjoint_from_mirage():
    train, report = load_pubmedqa(DATA / "train/pubmedqa_pqal_nontest500.jsonl.xz")
    assert report.loaded == 500 and not report.skipped
    mirage, _ = load_mirage(MIRAGE, tasks=["pubmedqa"])
    assert not {q.question for q in train} & {q.question for q in mirage}
    assert all(q.evidence_ids for q in train)


def test_huatuo_carries_reference_reasoning():
    questions, report = load_huatuo(DATA / "train/huatuogpt_o1_demo_195.json.xz")
    assert report.loaded == 195
    assert all(q.references and len(q.references[0]) > 100 for q in questions)


def test_corpus_reads_every_bundled_passage_and_maps_pmids():
    reports = []
    passages = list(iter_corpus(DATA / "corpus", reports))
    assert len(passages) == 43157 and sum(r.loaded for r in reports) == 43157
    pubmed = next(p for p in passages if p.source == "pubmedqa_abstract")
    assert pubmed.doc_id.isdigit() and pubmed.id.startswith("pubmed:")


def test_malformed_jsonl_lines_are_skipped_and_counted_with_line_numbers(tmp_path):
    good = {"id": "1", "question": "Is it?", "options": {"A": "yes", "B": "no"}, "answer": "A", "PMID": [1]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "answer": "Z"}),  # answer not among options
        json.dumps({**good, "question": ""}),
        "[1, 2]",
        json.dumps({**good, "id": "2"}),
    ]
    path = tmp_path / "pq.jsonl.xz"
    with lzma.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    questions, report = load_pubmedqa(path)
    assert [q.id for q in questions] == ["pubmedqa:1", "pubmedqa:2"]
    assert [loc for loc, _ in report.skipped] == ["line 2", "line 3", "line 4", "line 5"]
    assert "not valid JSON" in report.skipped[0][1] and "'Z'" in report.skipped[1][1]
    assert report.summary().endswith("2 loaded, 4 skipped")


def test_malformed_corpus_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "title": "T", "text": "x", "source": "s"}\nbroken\n{"id": "b"}\n')
    reports = []
    assert [p.id for p in iter_corpus(path, reports)] == ["a"]
    assert reports[0].loaded == 1 and len(reports[0].skipped) == 2


def test_malformed_mirage_items_are_skipped_by_key(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(
        json.dumps(
            {
                "medqa": {
                    "q1": {"question": "Q?", "options": {"A": "a", "B": "b"}, "answer": "B"},
                    "q2": {"question": "Q?", "options": "A or B", "answer": "B"},
                }
            }
        )
    )
    questions, report = load_mirage(path)
    assert [q.id for q in questions] == ["medqa:q1"] and report.skipped[0][0] == "medqa/q2"


def test_a_file_that_is_not_json_is_an_error_with_the_line(tmp_path):
    path = tmp_path / "h.json"
    path.write_text('{"exams": \n oops}')
    with pytest.raises(DataError, match=r"h\.json:2: not valid JSON"):
        load_headqa(path)


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_huatuo(tmp_path / "nope.json")
