import json
import lzma

import pytest

from medr3.data import (
    DataError,
    iter_corpus,
    load_dataset,
    load_headqa,
    load_huatuo,
    load_json,
    load_jsonl,
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


def test_bundled_passage_ids_are_unique_with_the_medquad_collection_in_them():
    passages = list(iter_corpus(DATA / "corpus"))
    assert len({p.id for p in passages}) == len(passages) == 43157
    medquad = {p.id: p for p in passages if p.source == "medquad"}
    assert all(p.doc_id == p.id for p in medquad.values())
    # medquad:0000004-1 named seven pages of seven MedQuAD collections; now each has its own id.
    collections = ("gard", "ghr", "medlineplus", "niddk", "ninds", "seniorhealth", "nhlbi")
    same_number = sorted(i for i in medquad if i.endswith(":0000004-1"))
    assert same_number == sorted(f"medquad:{c}:0000004-1" for c in collections)
    assert medquad["medquad:gard:0000004-1"].title == "ABCD syndrome"
    # One CancerGov page per subtype repeats its number within the collection: numbered in file order.
    assert medquad["medquad:cancergov:0000013_2-1~2"].title == "Polycythemia Vera"


def test_repeated_corpus_ids_are_an_error_naming_file_and_line_unless_deduped(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text(
        '{"id": "p1", "text": "one"}\n{"id": "p2", "text": "two"}\n{"id": "p1", "text": "again"}\n'
    )
    (folder / "b.jsonl").write_text('{"id": "p2", "text": "elsewhere", "title": "T"}\n{"id": "p1~2", "text": "x"}\n')
    with pytest.raises(DataError) as err:
        list(iter_corpus(folder))
    message = str(err.value)
    assert "2 repeated passage id(s)" in message and "--dedupe-ids" in message
    assert f"{folder / 'a.jsonl'}:3: id 'p1' (first at {folder / 'a.jsonl'}:1)" in message
    assert f"{folder / 'b.jsonl'}:1: id 'p2' (first at {folder / 'a.jsonl'}:2)" in message

    reports = []
    passages = list(iter_corpus(folder, reports, dedupe_ids=True))
    assert [p.id for p in passages] == ["p1", "p2", "p1~2", "p2~2", "p1~2~2"]  # a renamed id is taken: renamed again
    assert [p.doc_id for p in passages] == [p.id for p in passages]
    assert reports[0].renamed == [("line 3", "p1 -> p1~2")] and reports[1].renamed[0] == ("line 1", "p2 -> p2~2")
    assert {p.source for p in passages} == {"a", "b"}  # no `source` field: the file's stem


def write_jsonl(path, records) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


def test_a_users_jsonl_questions_load_as_multiple_choice_or_open(tmp_path):
    path = tmp_path / "ward_rounds.jsonl"
    write_jsonl(path, [
        {"id": "q1", "question": "First-line drug for anaphylaxis?", "options": {"A": "Epinephrine", "B": "Atropine"},
         "answer": "A", "evidence_ids": ["doc-7", 12345], "reference": "Anaphylaxis needs IM epinephrine."},
        {"id": 2, "question": "Which vitamin prevents scurvy?", "options": ["Vitamin A", "Vitamin C", "Vitamin D"],
         "answer": "vitamin c"},  # an option's text, any case: its letter
        {"id": "q3", "question": "What causes tuberculosis?", "answer": "Mycobacterium tuberculosis"},
    ])  # fmt: skip
    questions, report = load_jsonl(path)
    assert report.loaded == 3 and not report.skipped
    q1, q2, q3 = questions
    assert q1.id == "ward_rounds:q1" and q1.source == "ward_rounds" and q1.answer_letter == "A"
    assert q1.answer_text == "Epinephrine" and q1.evidence_ids == ("doc-7", "12345")
    assert q1.references == ("Anaphylaxis needs IM epinephrine.",)
    assert q2.id == "ward_rounds:2" and q2.options == {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D"}
    assert (q2.answer_letter, q2.answer_text) == ("B", "Vitamin C")
    assert q3.options == {} and q3.answer_letter is None and q3.answer_text == "Mycobacterium tuberculosis"


def test_malformed_user_questions_are_skipped_and_counted_with_line_numbers(tmp_path):
    good = {"id": "1", "question": "Q?", "options": {"A": "yes", "B": "no"}, "answer": "B"}
    path = tmp_path / "mine.jsonl.gz"
    lines = [
        json.dumps(good),
        "{broken",
        json.dumps({**good, "id": "2", "answer": "maybe"}),  # neither a letter nor an option's text
        json.dumps({**good, "id": "3", "options": {"1": "yes", "2": "no"}}),  # keys not letters
        json.dumps({**good, "id": "1"}),  # repeated id
        json.dumps({"question": "no id?", "answer": "x"}),
        json.dumps({"id": "6", "question": "Open?", "answer": ""}),
        json.dumps({**good, "id": "7", "evidence_ids": "pmid1"}),
        json.dumps({"id": "8", "question": "Open?", "answer": 42}),  # an open question's numeric answer
    ]
    import gzip

    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    questions, report = load_jsonl(path)
    assert [q.id for q in questions] == ["mine:1", "mine:8"] and questions[1].answer_text == "42"
    assert [loc for loc, _ in report.skipped] == [f"line {i}" for i in (2, 3, 4, 5, 6, 7, 8)]
    reasons = [why for _, why in report.skipped]
    assert "not valid JSON" in reasons[0] and "'maybe'" in reasons[1] and "letters" in reasons[2]
    assert reasons[3] == "duplicate id '1' (first at line 1)" and "'id'" in reasons[4]
    assert "'answer'" in reasons[5] and "evidence_ids" in reasons[6]
    assert report.summary().endswith("2 loaded, 7 skipped")


def test_a_json_list_of_questions_loads_and_skips_bad_items_by_index(tmp_path):
    path = tmp_path / "exam.json"
    path.write_text(json.dumps([
        {"id": "a", "question": "Q?", "options": ["x", "y"], "answer": "B"},
        "not a record",
        {"id": "c", "question": "Q?", "options": ["x"], "answer": "A"},  # one option is no choice
    ]))  # fmt: skip
    questions, report = load_json(path)
    assert [q.id for q in questions] == ["exam:a"] and questions[0].answer_text == "y"
    assert [loc for loc, _ in report.skipped] == ["item 1", "item 2"]
    path.write_text('{"questions": []}')
    with pytest.raises(DataError, match="list of question records"):
        load_json(path)


def test_the_mirage_layout_is_read_from_any_path_with_any_task_names(tmp_path):
    path = tmp_path / "elsewhere" / "hospital_exam.json"
    path.parent.mkdir()
    item = {"question": "Q?", "options": {"A": "a", "B": "b"}, "answer": "B"}
    path.write_text(json.dumps({"cardiology": {"c1": item}, "medqa": {"m1": item, "m2": {**item, "answer": "Z"}}}))
    questions, report = load_json(path)
    assert [q.id for q in questions] == ["medqa:m1", "cardiology:c1"]  # MIRAGE's own tasks first
    assert report.skipped == [("medqa/m2", "answer 'Z' is not one of the options ['A', 'B']")]
    assert [q.id for q in load_mirage(path, tasks=["cardiology"])[0]] == ["cardiology:c1"]


def test_dataset_specs_of_the_user_kinds_load_through_load_dataset(tmp_path):
    from medr3.config import DatasetSpec

    path = tmp_path / "mine.jsonl"
    write_jsonl(path, [{"id": i, "question": f"Q{i}?", "answer": "yes"} for i in range(5)])
    questions, _ = load_dataset(DatasetSpec(kind="jsonl", path=str(path), limit=3))
    assert [q.id for q in questions] == ["mine:0", "mine:1", "mine:2"]


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
