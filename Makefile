# edgetrunc: `make demo` runs the whole pipeline, `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast train convert bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q

# The quick loop: every test not marked slow (under 3 minutes on 2 cores).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Reproduces the shipped detector models/tlunet.keras and its training record.
# The shipped model was trained with TensorFlow's oneDNN kernels off (their rounding differs);
# drop TF_ENABLE_ONEDNN_OPTS=0 for about 2.5x faster training with other rounding.
train: install
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m edgetrunc train --model tlunet --covers embedded --payload 0.4 --seed 0 \
		--stride 64 --curriculum 1.0,0.7,0.4 --stage-epochs 5 --epochs 400 --patience 20 \
		--frozen-bn 0.2 --time-budget 38 --out models/tlunet.keras --force

convert: install
	$(PY) scripts/convert.py models/tlunet.keras --out models --force

# Every benchmark section of BENCHMARKS.md, one entry point (`python -m scripts.benchmarks --list`
# names them; `--quick` is a smoke test into a copy).
bench: install
	$(PY) -m scripts.benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
