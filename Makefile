# netsift: the two commands of the README. Both create or reuse .venv and install the exact pins.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.netsift-installed

.PHONY: demo test check bench clean-venv

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/netsift demo

# two workers (pytest-xdist): the suite's processes share the 2 cores; tests that time things run in their own
# processes (torchrun, kill -9) and give themselves room
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist load

# the fast lane while working: every module, no slow end-to-end tests (marked @pytest.mark.slow), under 90 s
check: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" -x -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
