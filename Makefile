# Two entry points, each works on a fresh machine with only Python 3.11 and pip:
#   make demo   - create .venv, install blip-rl, run the main job: BLIP against fine-tuning
#                 on the @demo games (python -m blip_rl.compare), both forgetting matrices
#   make test   - create .venv, install blip-rl with dev extras, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m blip_rl.compare --steps-per-game 100000 --eval-every 50000 --capture-video

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy blip_rl

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy blip_rl

clean:
	rm -rf $(VENV) build *.egg-info
