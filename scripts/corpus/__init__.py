"""Builders of the model corpus (see scripts/build_corpus.py)."""
