# Quick start:  make demo   (install + open the dashboard)
#               make test   (install + run every test)
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PORT   ?= 8501

.PHONY: demo test test-fast install install-dev bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "clipgeom needs Python 3.11 ($(PYTHON) not found; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

demo: $(VENV)/.runtime
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: $(VENV)/.dev
	$(PY) -m pytest tests

# Development: every test but the browser, Ray and slow tiers (tests/conftest.py).
test-fast: $(VENV)/.dev
	$(PY) -m pytest tests -m "not browser and not ray and not slow"

bench: $(VENV)/.runtime
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
