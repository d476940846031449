# The two commands of the README's quick start, and a few helpers.
PYTHON ?= python3
# Where MNIST's gzipped IDX files live (a folder holding mnist/). CI and this repo's tests use the
# shared copy of the test split beside the checkout; elsewhere the library downloads MNIST.
SCORE_MODELS_DATA ?= $(abspath ../shared/data)
export SCORE_MODELS_DATA

.PHONY: book test test-fast test-min artifacts benchmarks

# Render the book from the committed notebook outputs: with quarto where it is installed, and
# otherwise a preview (docs/preview.py: nbconvert HTML with navigation, offline MathJax) in _preview/.
book:
	$(PYTHON) -m pip install -q -e ".[book]" || $(PYTHON) -m pip install -q -e ".[preview]"
	@if command -v quarto >/dev/null 2>&1; then quarto render; else \
	  echo "quarto is not installed (get it from https://quarto.org/docs/get-started/ or"; \
	  echo "'conda env create -f environment.yml'); rendering a preview without it instead."; \
	  $(PYTHON) docs/preview.py --out _preview; fi

# Every unit test and every chapter notebook (nbval, lax mode) against the cached artifacts, one
# worker per core (pytest-xdist; --dist loadfile keeps each notebook's cells in order in one kernel).
test:
	$(PYTHON) -m pip install -q -e ".[test]"
	SCORE_MODELS_ARTIFACTS=require $(PYTHON) -m pytest -n auto --dist loadfile --durations=20 --nbval-lax -p no:cacheprovider tests notebooks

# Unit tests only (no notebooks).
test-fast:
	SCORE_MODELS_ARTIFACTS=require $(PYTHON) -m pytest -p no:cacheprovider tests

# The unit tests against the oldest versions pyproject.toml allows (constraints-min.txt), in a
# fresh virtual environment (the tests import the checkout; tests/test_install.py covers installs).
test-min:
	rm -rf /tmp/venv-min && $(PYTHON) -m venv /tmp/venv-min
	/tmp/venv-min/bin/pip install -q -c constraints-min.txt ".[test]"
	rm -rf build
	SCORE_MODELS_ARTIFACTS=require PYTHONPATH=$(CURDIR) /tmp/venv-min/bin/python -m pytest -p no:cacheprovider tests

# Retrain every cached model from scratch.
artifacts:
	$(PYTHON) -m pip install -q -e .
	score-models artifacts build

benchmarks:
	$(PYTHON) -m benchmarks
