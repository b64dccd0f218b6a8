# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and
# `make test`. Each sets up the virtual environment on first use and is quick afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/advlt run pgd-at --dataset digits-lt
	@echo "next: $(VENV)/bin/advlt runs    $(VENV)/bin/advlt eval RUN --attacks all    $(VENV)/bin/advlt (the TUI)"

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test,bench]'
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
