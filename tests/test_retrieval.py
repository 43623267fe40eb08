"""Retrieval without Ray: chunking, metrics, the indexer (resume, malformed lines), the two store backends, the
searcher's guarantees (tags stripped, incomplete index refused, unreachable server named quickly)."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from medr3.config import RetrieverConfig
from medr3.data import DataError, Passage
from medr3.retrieval.chunking import chunk_passage
from medr3.retrieval.indexer import build_index
from medr3.retrieval.manifest import IndexNotReadyError, Manifest, check_index
from medr3.retrieval.quality import hit_at_k, ndcg_at_k, recall_at_k, reciprocal_rank, summarize
from medr3.retrieval.searcher import Searcher
from medr3.retrieval.store import LUCENE_STOPWORDS, PLAIN_TEXT_INDEX, StoreUnavailableError, text_index

QUERIES = [
    "What are the symptoms of adult acute lymphoblastic leukemia?",
    "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?",
    "treatment options for chronic lymphocytic leukemia",
    "zymoglossal fever",
]


def same_ranking(a: list[dict], b: list[dict]) -> bool:
    """Same scores, and the same ids within each group of equal scores (engines order ties differently); the lowest
    group may be cut at k differently, so only its size is compared."""
    if not np.allclose([d["score"] for d in a], [d["score"] for d in b], rtol=1e-4, atol=1e-5):
        return False

    def groups(docs):
        by_score: dict[float, set] = {}
        for d in docs:
            by_score.setdefault(round(d["score"], 4), set()).add(d["id"])
        return [by_score[s] for s in sorted(by_score, reverse=True)]

    ga, gb = groups(a), groups(b)
    return len(ga) == len(gb) and ga[:-1] == gb[:-1] and len(ga[-1]) == len(gb[-1])


def test_long_passages_become_overlapping_chunks_that_keep_their_ids():
    words = [f"w{i}" for i in range(250)]
    passage = Passage("p1", "T", " ".join(words), "src", "12345")
    chunks = chunk_passage(passage, words=100, overlap=20)
    assert [c.id for c in chunks] == ["p1#0", "p1#1", "p1#2"]
    assert all(c.doc_id == "12345" and c.title == "T" and c.source == "src" for c in chunks)
    assert chunks[1].text.split()[:20] == chunks[0].text.split()[-20:]
    assert chunks[-1].text.split()[-1] == "w249"
    short = Passage("p2", "", "short text", "s", "p2")
    assert chunk_passage(short, 100, 20) == [short]


def test_metrics_score_gold_ids_by_rank():
    retrieved, gold = ["a", "b", "c", "b"], {"c", "z"}
    assert hit_at_k(retrieved, gold, 2) == 0.0 and hit_at_k(retrieved, gold, 3) == 1.0
    assert recall_at_k(retrieved, gold, 4) == 0.5
    assert reciprocal_rank(retrieved, gold, 10) == pytest.approx(1 / 3)
    summary = summarize([(retrieved, gold), (["z"], {"z"}), (["x"], set())], ks=(1, 3))
    assert summary["n"] == 2 and summary["hit@1"] == 0.5 and summary["mrr@3"] == pytest.approx((1 / 3 + 1) / 2)


def test_ndcg_counts_each_gold_id_once_at_its_first_rank_against_the_ideal_ranking():
    retrieved, gold = ["x", "a", "a", "b"], {"a", "b", "c"}  # two chunks of passage a
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)  # three gold ids at ranks 1-3
    assert ndcg_at_k(retrieved, gold, 4) == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / ideal)
    assert ndcg_at_k(retrieved, gold, 1) == 0.0 and ndcg_at_k(["a", "b", "c"], gold, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["b"], {"b"}, 10) == 1.0 and ndcg_at_k(["b"], set(), 10) == 0.0
    summary = summarize([(["a"], {"a"}), (["x", "b"], {"b"})], ks=(1, 5))
    assert summary["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3)) / 2)


def test_malformed_corpus_lines_are_skipped_and_counted(small_index):
    manifest = Manifest.load(small_index("edge").index_path)
    assert manifest.complete
    assert manifest.skipped_lines == 2
    assert any("not valid JSON" in s for s in manifest.skipped_examples)
    assert any("'text' missing" in s for s in manifest.skipped_examples)
    assert manifest.points_total > 241  # 241 good passages, the long ones split into chunks


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_both_backends_return_the_same_top_k(small_index, minilm, mode):
    """With the same text processing: qdrant-client's local mode indexes plain words only (`PLAIN_TEXT_INDEX`)."""
    results = {}
    for backend in ("edge", "local"):
        searcher = Searcher(small_index(backend, bm25_stopwords="none", bm25_stemmer="none"), embedder=minilm)
        try:
            results[backend] = searcher.batch_search(QUERIES, k=5, mode=mode)
        finally:
            searcher.close()
    for edge, local in zip(results["edge"], results["local"], strict=True):
        assert len(edge) == len(local) == 5
        np.testing.assert_allclose([d["score"] for d in edge], [d["score"] for d in local], rtol=1e-4, atol=1e-5)

        assert same_ranking(edge, local)
        if mode == "dense":
            assert [d["id"] for d in edge] == [d["id"] for d in local]


def test_search_finds_the_obvious_passage_in_every_mode(small_index, minilm):
    searcher = Searcher(small_index("edge"), embedder=minilm)
    try:
        for mode in ("dense", "bm25", "hybrid"):
            top = searcher.batch_search(QUERIES[1:2], k=3, mode=mode)[0]
            assert top[0]["doc_id"] == "21645374", (mode, top)  # the lace-plant PubMedQA abstract
            assert set(top[0]) == {"id", "doc_id", "title", "text", "score", "source"}
    finally:
        searcher.close()


def test_source_filter_restricts_results_and_unknown_sources_are_an_error(small_index, minilm):
    searcher = Searcher(small_index("edge"), embedder=minilm)
    try:
        docs = searcher.batch_search(QUERIES, k=5, sources=["bioasq_snippet"])
        assert all(d["source"] == "bioasq_snippet" for hits in docs for d in hits)
        with pytest.raises(ValueError, match="unknown corpus source"):
            searcher.batch_search(QUERIES, sources=["pubmed_full_text"])
    finally:
        searcher.close()


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_tags_are_stripped_from_returned_text(small_index, minilm, backend):
    searcher = Searcher(small_index(backend), embedder=minilm)
    try:
        doc = searcher.batch_search(["zymoglossal fever"], k=1, mode="bm25")[0][0]
    finally:
        searcher.close()
    assert doc["id"] == "tagged:1"
    assert "Zymoglossal fever" in doc["text"] and "rest" in doc["text"]
    for tag in ("<search>", "</search>", "<document>", "</document>", "</think>", "<answer>"):
        assert tag not in doc["text"] and tag not in doc["title"]


def test_interrupted_build_is_refused_then_resumed_to_the_same_index(tmp_path, small_corpus, small_index, minilm):
    config = RetrieverConfig(index_path=str(tmp_path / "index"), batch_size=64)

    def crash_after_batch_1(batch: int) -> None:
        if batch == 1:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        build_index(config, small_corpus, embedder=minilm, progress=False, after_batch=crash_after_batch_1)
    partial = Manifest.load(config.index_path)
    assert partial.batches_done == 2 and not partial.complete
    with pytest.raises(IndexNotReadyError, match="incomplete"):
        Searcher(config, embedder=minilm)

    report = build_index(config, small_corpus, embedder=minilm, progress=False)
    assert report.batches_resumed == 2 and report.batches_built == report.batches_total - 2
    final = Manifest.load(config.index_path)
    reference = Manifest.load(small_index("edge").index_path)
    assert final.complete and final.points_total == reference.points_total == report.points
    assert final.fingerprint == reference.fingerprint and final.sources == reference.sources

    resumed, whole = Searcher(config, embedder=minilm), Searcher(small_index("edge"), embedder=minilm)
    try:
        for mode in ("dense", "bm25"):
            a, b = resumed.batch_search(QUERIES, k=5, mode=mode), whole.batch_search(QUERIES, k=5, mode=mode)
            assert all(same_ranking(x, y) for x, y in zip(a, b, strict=True)), (mode, a, b)
    finally:
        resumed.close()
        whole.close()
    assert build_index(config, small_corpus, embedder=minilm, progress=False).batches_built == 0  # finished: no-op


def test_rerun_with_other_inputs_refuses_instead_of_mixing_indexes(tmp_path, small_corpus, small_index, minilm):
    index_path = small_index("edge").index_path
    other = RetrieverConfig(index_path=index_path, batch_size=64, chunk_words=64, chunk_overlap=8)
    with pytest.raises(IndexNotReadyError, match="other inputs"):
        build_index(other, small_corpus, embedder=minilm, progress=False)


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(IndexNotReadyError, match="build the index"):
        Searcher(RetrieverConfig(index_path=str(tmp_path / "nothing")))


def test_a_server_index_is_checked_against_its_manifest_without_reaching_the_server(tmp_path):
    """What the pipelines run before any actor starts: the manifest alone, no connection to the server."""
    config = RetrieverConfig(backend="server", url="http://nowhere.invalid:6333", index_path=str(tmp_path),
                             collection="pubmed")  # fmt: skip
    with pytest.raises(IndexNotReadyError, match="no index manifest"):
        check_index(config)
    fingerprint = {"backend": "server", "collection": "pubmed", "embedder": "minilm", "url": config.url}
    Manifest(fingerprint, batches_total=2, points_total=10, dim=384, batches_done=1).save(tmp_path)
    with pytest.raises(IndexNotReadyError, match="incomplete"):
        check_index(config)
    Manifest(fingerprint, batches_total=2, points_total=10, dim=384, batches_done=2, complete=True).save(tmp_path)
    assert check_index(config).points_total == 10
    with pytest.raises(IndexNotReadyError) as err:
        check_index(config.model_copy(update={"collection": "wiki", "embedder": "/models/medcpt"}))
    message = str(err.value)
    assert "collection 'wiki'" in message and "collection 'pubmed' (config: 'wiki')" in message
    assert "embedder 'minilm' (config: '/models/medcpt')" in message and "index_corpus.py" in message
    with pytest.raises(IndexNotReadyError, match="backend 'server' \\(config: 'edge'\\)"):
        check_index(config.model_copy(update={"backend": "edge"}))


def test_torn_manifest_is_never_read_as_complete(tmp_path):
    (tmp_path / "manifest.json").write_text('{"fingerprint": {}, "batches_total"', encoding="utf-8")
    with pytest.raises(IndexNotReadyError, match="unreadable manifest"):
        Manifest.load(tmp_path)
    Manifest({"x": 1}, batches_total=3, points_total=10, dim=4).save(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"] is False
    assert not list(tmp_path.glob(".manifest.*"))  # the temp file was renamed into place


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_qdrant_url_fails_within_the_timeout_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    config = RetrieverConfig(backend="server", url=url, index_path=str(tmp_path), timeout_s=3.0, retries=2)
    start = time.perf_counter()
    with pytest.raises(StoreUnavailableError, match=url.replace(".", r"\.")) as err:
        Searcher(config)
    assert time.perf_counter() - start < config.timeout_s
    assert "3 attempt(s)" in str(err.value)


@pytest.fixture(scope="module")
def default_index_quality(root):
    """`(manifest, eval_retrieval's results)` on the index ./setup.sh builds (skipped without it): the three arms and
    the plain-BM25 reference; ~1 min of searching."""
    from medr3.retrieval.manifest import is_complete
    from pipelines.eval_retrieval import evaluate, plain_bm25

    index_path = root / "artifacts/index/default"
    if not is_complete(index_path):
        pytest.skip("default index not built (./setup.sh builds it)")
    searcher = Searcher(RetrieverConfig(index_path=str(index_path)))
    try:
        reference = plain_bm25(searcher.manifest, None)
        return searcher.manifest, evaluate(searcher, root / "data/eval/mirage/benchmark_with_pmid.json.xz", reference)
    finally:
        searcher.close()


@pytest.mark.slow
def test_hybrid_finds_gold_pmids_at_least_as_often_as_bm25_on_the_default_index(default_index_quality):
    _, results = default_index_quality
    found = {mode: sum(by_mode[mode]["hit@10"] * by_mode[mode]["n"] for by_mode in results.values()) for mode in
             ("bm25", "hybrid")}  # fmt: skip
    assert found["hybrid"] >= found["bm25"], results


@pytest.mark.slow
def test_the_bm25_arm_is_at_least_as_good_as_plain_bm25s_on_the_default_index(default_index_quality):
    """Issue 16's bar, nDCG@10 per task (measured: docs/architecture.md, "BM25 text processing"); 0.002 of slack is
    about one PubMedQA* question moving by one rank."""
    manifest, results = default_index_quality
    if "text_index" not in manifest.fingerprint:
        pytest.skip("default index built before the BM25 text processing: pipelines/prepare.py --only index --force")
    ndcg = {mode: [by_mode[mode]["ndcg@10"] for by_mode in results.values()] for mode in ("bm25", "bm25s")}
    assert all(arm >= plain - 0.002 for arm, plain in zip(ndcg["bm25"], ndcg["bm25s"], strict=True)), results
    assert sum(ndcg["bm25"]) >= sum(ndcg["bm25s"]), results


class HashEmbedder:
    """Words hashed into 64 dimensions, unit norm: a deterministic encoder for index tests that need no model."""

    name, dim, max_tokens = "hash", 64, 128

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        import zlib

        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def users_corpus(path, repeat: bool = False):
    """30 passages as a user writes them: ids, texts, some titles, no `source` field."""
    topics = ["anaphylaxis", "scurvy", "tuberculosis", "malaria", "gout", "asthma"]
    rows = [
        {"id": f"ward-{i}", "title": f"{topics[i % 6].title()} note {i}" if i % 2 else "",
         "text": f"Ward note {i} about {topics[i % 6]}: treatment number {i} and follow-up."}
        for i in range(30)
    ]  # fmt: skip
    rows[7]["text"] = "Intramuscular epinephrine is the first-line treatment of anaphylaxis zymoglossal."
    if repeat:
        rows[20]["id"] = "ward-3"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_a_users_corpus_is_indexed_into_its_own_folder_and_searched(tmp_path):
    corpus = users_corpus(tmp_path / "ward_notes.jsonl")
    config = RetrieverConfig(index_path=str(tmp_path / "index"), batch_size=8)
    report = build_index(config, corpus, embedder=HashEmbedder(), progress=False)
    assert report.points == 30 and report.batches_total == 4 and report.skipped_lines == 0
    manifest = Manifest.load(config.index_path)
    assert manifest.complete and manifest.sources == {"ward_notes": 30} and manifest.fingerprint["ids"] == "unique"
    assert manifest.corpus == str(corpus)
    searcher = Searcher(config, embedder=HashEmbedder())
    try:
        for mode in ("bm25", "dense", "hybrid"):
            top = searcher.batch_search(["zymoglossal epinephrine anaphylaxis"], k=3, mode=mode)[0]
            assert top[0]["id"] == top[0]["doc_id"] == "ward-7", mode
            assert top[0]["source"] == "ward_notes"
    finally:
        searcher.close()


def test_repeated_corpus_ids_stop_the_build_before_embedding_unless_deduped(tmp_path):
    corpus = users_corpus(tmp_path / "notes.jsonl", repeat=True)
    config = RetrieverConfig(index_path=str(tmp_path / "index"), batch_size=8)

    class NoEmbedding(HashEmbedder):
        def encode(self, texts, batch_size=64, progress=False):
            raise AssertionError("embedded a corpus with repeated ids")

    with pytest.raises(DataError, match=r"notes\.jsonl:21: id 'ward-3' \(first at .*notes\.jsonl:4\)"):
        build_index(config, corpus, embedder=NoEmbedding(), progress=False)
    assert Manifest.load(config.index_path) is None  # nothing written
    report = build_index(config, corpus, embedder=HashEmbedder(), progress=False, dedupe_ids=True)
    assert report.renamed_ids == 1 and "1 repeated id(s) renamed" in report.summary()
    assert Manifest.load(config.index_path).fingerprint["ids"].startswith("unique, repeats renamed")
    searcher = Searcher(config, embedder=HashEmbedder())
    try:
        ids = {d["id"] for d in searcher.batch_search(["ward note 20"], k=30, mode="bm25")[0]}
    finally:
        searcher.close()
    assert {"ward-3", "ward-3~2"} <= ids and len(ids) == 30


def test_an_index_built_before_unique_ids_is_searchable_with_a_warning_and_named_on_rebuild(tmp_path, caplog):
    corpus = users_corpus(tmp_path / "notes.jsonl")
    config = RetrieverConfig(index_path=str(tmp_path / "index"), batch_size=8)
    build_index(config, corpus, embedder=HashEmbedder(), progress=False)
    old = Manifest.load(config.index_path)
    del old.fingerprint["ids"]  # as artifacts/index/default was built
    old.save(config.index_path)
    with caplog.at_level("WARNING", logger="medr3.retrieval.manifest"):
        assert check_index(config).complete
    assert "built before passage ids were made unique" in caplog.text and "--force" in caplog.text
    with pytest.raises(IndexNotReadyError, match="built before passage ids were made unique.*--force"):
        build_index(config, corpus, embedder=HashEmbedder(), progress=False)
    assert build_index(config, corpus, embedder=HashEmbedder(), progress=False, force=True).batches_built == 4


def test_an_interrupted_build_of_a_users_corpus_says_how_to_resume_it(tmp_path):
    corpus = users_corpus(tmp_path / "notes.jsonl")
    config = RetrieverConfig(index_path=str(tmp_path / "index"), batch_size=8)

    def crash(batch: int) -> None:
        raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        build_index(config, corpus, embedder=HashEmbedder(), progress=False, after_batch=crash)
    with pytest.raises(IndexNotReadyError, match=f"--corpus {corpus} --index-path {config.index_path}"):
        check_index(config)
    assert build_index(config, corpus, embedder=HashEmbedder(), progress=False).batches_resumed == 1


def test_index_corpus_puts_a_users_corpus_in_a_new_folder_named_after_it(tmp_path):
    from pipelines.index_corpus import index_path_for as where

    assert where("/data/ward_notes.jsonl.xz", None, "artifacts/index/default", tmp_path) == str(
        tmp_path / "artifacts/index/ward_notes"
    )
    assert where("/data/ward_notes.jsonl", "/idx/mine", "artifacts/index/default", tmp_path) == "/idx/mine"
    assert where(None, None, "artifacts/index/default", tmp_path) == "artifacts/index/default"


def text_index_of_shard(config):
    """The text index qdrant-edge holds on the search field, read back from the shard on disk."""
    import qdrant_edge as qe

    from medr3.retrieval.edge import shard_path

    shard = qe.EdgeShard.load(str(shard_path(config)))
    try:
        return shard.info().payload_schema["search_text"].params
    finally:
        shard.close()


def test_the_bm25_arm_drops_stopwords_and_stems_as_configured_and_the_manifest_records_it(tmp_path):
    import qdrant_edge as qe

    corpus = users_corpus(tmp_path / "notes.jsonl")
    queries = ["zymoglossals", "the of is"]  # a plural the corpus never spells; stopwords only
    found = {}
    for name, settings in {"default": {}, "plain": {"bm25_stopwords": "none", "bm25_stemmer": "none"}}.items():
        config = RetrieverConfig(index_path=str(tmp_path / name), batch_size=8, **settings)
        build_index(config, corpus, embedder=HashEmbedder(), progress=False)
        assert Manifest.load(config.index_path).fingerprint["text_index"] == text_index(config)
        searcher = Searcher(config, embedder=HashEmbedder())
        try:
            found[name] = [[d["id"] for d in hits] for hits in searcher.batch_search(queries, k=3, mode="bm25")]
        finally:
            searcher.close()
        params = text_index_of_shard(config)
        if name == "default":
            assert params.stopwords.custom == LUCENE_STOPWORDS
            assert params.stemmer.language == qe.SnowballLanguage.English
        else:
            assert params.stopwords is None and params.stemmer is None
    assert text_index(RetrieverConfig()) == {"tokenizer": "word", "lowercase": True, "stopwords": "lucene",
                                             "stemmer": "english"}  # fmt: skip
    assert found["default"] == [["ward-7"], []]  # stemmed to the note's word; nothing left of the other query
    assert found["plain"] == [[], ["ward-7"]]  # the one note with "is the … of" in it


def test_the_local_backend_records_the_plain_words_it_indexes():
    config = RetrieverConfig(backend="local", bm25_stopwords="english")
    assert text_index(config) == PLAIN_TEXT_INDEX


def test_an_index_built_before_bm25_text_processing_still_searches_with_a_warning_naming_the_rebuild(tmp_path, caplog):
    corpus = users_corpus(tmp_path / "notes.jsonl")
    plain = RetrieverConfig(
        index_path=str(tmp_path / "index"), batch_size=8, bm25_stopwords="none", bm25_stemmer="none"
    )
    build_index(plain, corpus, embedder=HashEmbedder(), progress=False)
    old = Manifest.load(plain.index_path)
    del old.fingerprint["text_index"]  # as artifacts/index/default was built before it was recorded
    old.save(plain.index_path)
    config = RetrieverConfig(index_path=plain.index_path, batch_size=8)  # today's defaults
    with caplog.at_level("WARNING", logger="medr3.retrieval.manifest"):
        searcher = Searcher(config, embedder=HashEmbedder())
    try:
        hits = searcher.batch_search(["zymoglossal epinephrine", "zymoglossals"], k=3, mode="bm25")
    finally:
        searcher.close()
    assert hits[0][0]["id"] == "ward-7" and hits[1] == []  # its own plain words: found, but not stemmed
    assert "built before the BM25 arm dropped stopwords and stemmed" in caplog.text
    assert (
        f"python pipelines/index_corpus.py --corpus {corpus} --index-path {config.index_path} --force" in caplog.text
    )
    with pytest.raises(IndexNotReadyError, match="built before the BM25 arm dropped stopwords.*--force"):
        build_index(config, corpus, embedder=HashEmbedder(), progress=False)
    assert build_index(config, corpus, embedder=HashEmbedder(), progress=False, force=True).batches_built == 4
    assert Manifest.load(config.index_path).fingerprint["text_index"]["stemmer"] == "english"


def test_an_index_whose_text_processing_differs_from_the_config_searches_with_its_own_and_says_so(tmp_path, caplog):
    corpus = users_corpus(tmp_path / "notes.jsonl")
    config = RetrieverConfig(index_path=str(tmp_path / "index"), batch_size=8)
    build_index(config, corpus, embedder=HashEmbedder(), progress=False)
    other = config.model_copy(update={"bm25_stemmer": "none"})
    with caplog.at_level("WARNING", logger="medr3.retrieval.manifest"):
        searcher = Searcher(other, embedder=HashEmbedder())
    try:
        assert [d["id"] for d in searcher.batch_search(["zymoglossals"], k=1, mode="bm25")[0]] == ["ward-7"]
    finally:
        searcher.close()
    assert "'stemmer': 'english'" in caplog.text and "'stemmer': 'none'" in caplog.text and "--force" in caplog.text


def test_eval_retrieval_reports_the_three_arms_and_the_plain_bm25_reference(tmp_path):
    from pipelines.eval_retrieval import PlainBM25, evaluate, table

    corpus = users_corpus(tmp_path / "notes.jsonl")
    config = RetrieverConfig(index_path=str(tmp_path / "index"), batch_size=8)
    build_index(config, corpus, embedder=HashEmbedder(), progress=False)
    item = {"options": {"A": "yes", "B": "no"}, "answer": "A"}
    mirage = {
        "pubmedqa": {"1": {**item, "question": "What treats anaphylaxis zymoglossal?", "PMID": ["ward-7"]}},
        "bioasq": {"2": {**item, "question": "Is there a ward note about scurvy number 13?", "PMID": ["ward-13"]}},
    }
    (tmp_path / "mirage.json").write_text(json.dumps(mirage))
    searcher = Searcher(config, embedder=HashEmbedder())
    try:
        results = evaluate(searcher, tmp_path / "mirage.json", PlainBM25(corpus, 200, 32))
    finally:
        searcher.close()
    for task in ("pubmedqa", "bioasq"):
        assert list(results[task]) == ["dense", "bm25", "hybrid", "bm25s"]
        assert all(results[task][mode]["n"] == 1 for mode in results[task])
    assert results["pubmedqa"]["bm25"]["ndcg@10"] == results["pubmedqa"]["bm25s"]["ndcg@10"] == 1.0
    printed = table(results)
    assert "ndcg@10" in printed and "bm25s" in printed and "BioASQ-Y/N" in printed


def test_a_qdrant_server_gets_the_same_text_processing_as_the_embedded_store():
    """The server's payload-index request, built without a server (qdrant-client's models validate it)."""
    from types import SimpleNamespace

    from qdrant_client import models

    from medr3.retrieval.client import ClientStore

    config = RetrieverConfig(backend="server", url="http://qdrant:6333")
    params = ClientStore._text_index_params(SimpleNamespace(_m=models, _config=config))
    assert set(params.stopwords.custom) == LUCENE_STOPWORDS and params.stemmer.language == "english"
    assert params.tokenizer == models.TokenizerType.WORD and params.lowercase and params.scoring
    plain = ClientStore._text_index_params(
        SimpleNamespace(_m=models, _config=config.model_copy(update={"backend": "local"}))
    )
    assert plain.stopwords is None and plain.stemmer is None
