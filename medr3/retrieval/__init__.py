"""Corpus retrieval: chunking, a Qdrant store with two backends, the resumable indexer, the searcher and its
quality metrics (`quality.py`)."""
