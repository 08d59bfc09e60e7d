# Two commands for a new user: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch; a looser requirement would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	# OpenNMT-py 3.5.1 pins torch<2.3 and heavy optional packages: install it alone
	$(BIN)/pip install -q --no-deps OpenNMT-py==3.5.1
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/onmt-sdrop install-hook
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m onmt_sdrop.demo --out demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/python bench/cpu_bench.py

clean:
	rm -rf $(VENV) demo/work bench/work
