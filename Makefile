# The two commands README.md starts with: `make up` and `make test`.
# Both work on a fresh clone: they create .venv, install labctl into it, and make sure a Docker
# engine answers (tools/ensure-host installs and starts one on a Debian host that has none).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LAB    ?= maillab

.PHONY: up down status test test-unit test-lab fuzz image bench lint engine clean

$(BIN)/labctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	@# An editable install leaves our own modules uncompiled, and where PYTHONDONTWRITEBYTECODE is
	@# set (these machines) every labctl command compiled them again: about 0.1 s of `labctl up`.
	$(BIN)/python -m compileall -q labctl services
	@touch $@

engine:
	@tools/ensure-host

up: $(BIN)/labctl engine
	$(BIN)/labctl up --lab $(LAB)

down: $(BIN)/labctl engine
	$(BIN)/labctl down --lab $(LAB)

status: $(BIN)/labctl engine
	$(BIN)/labctl status

image: $(BIN)/labctl engine
	$(BIN)/labctl image build

# Unit and component tests, then the lab tests on the real engine (they build the image if needed).
test: $(BIN)/labctl engine
	$(BIN)/pytest -q

test-unit: $(BIN)/labctl
	$(BIN)/pytest -q tests/unit tests/component

# The fuzz suite alone, with more cases than CI runs: `make fuzz FUZZ_EXAMPLES=20000`.
FUZZ_EXAMPLES ?= 5000
fuzz: $(BIN)/labctl
	MAILLAB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/fuzz

bench: $(BIN)/labctl engine
	$(BIN)/python bench/bench_up.py

lint: $(BIN)/labctl
	$(BIN)/ruff check labctl services tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
