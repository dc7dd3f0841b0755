# TAPPA Book: two commands, each doing all the set-up on a fresh machine (Python 3.11 + make).
#   make book   - create .venv if missing, install, execute every chapter with papermill, render the HTML book
#                 MODEL=<id or folder> OUT=<folder>: a whole book for another model in OUT (the default book is
#                 untouched); DEVICE=cuda DTYPE=bfloat16 DEVICE_MAP=auto reach every chapter; JOBS=N chapters
#                 at once (default 2 for the default book, 1 with OUT); SMOKE=1 runs every chapter on its small
#                 parameters (a quick complete book)
#   make test   - same set-up, then ruff (pyproject.toml) and pytest (unit tests + a papermill smoke run of every notebook)
#   make lab    - same set-up, then JupyterLab on notebooks/ with this environment (no browser without a display)
# The install is skipped when requirements.txt, requirements-nodeps.txt and pyproject.toml have not changed since the last one
# (a hash of both is kept in .venv/.tappa-installed).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tappa-installed
PYTEST_ARGS ?=
LAB_ARGS ?=
MODEL ?=
OUT ?=
DEVICE ?=
DTYPE ?=
DEVICE_MAP ?=
JOBS ?=
SMOKE ?=
BOOK_ARGS := $(if $(MODEL),--model "$(MODEL)") $(if $(OUT),--out "$(OUT)") $(if $(DEVICE),--device "$(DEVICE)") \
             $(if $(DTYPE),--dtype "$(DTYPE)") $(if $(DEVICE_MAP),--device-map "$(DEVICE_MAP)") \
             $(if $(JOBS),--jobs "$(JOBS)") $(if $(SMOKE),--smoke)

.PHONY: all book test lab venv params-table clean help

help:
	@echo "make book   # set up .venv, execute the notebooks, build the HTML book into _build/html"
	@echo "make book MODEL=Qwen/Qwen2.5-0.5B OUT=books/qwen DEVICE=cuda DTYPE=bfloat16  # a whole book for another model"
	@echo "make test   # set up .venv, run the unit tests and the notebook smoke runs"
	@echo "make lab    # set up .venv, open the notebooks in JupyterLab (LAB_ARGS='--port 8899 --no-browser')"
	@echo "make clean  # remove _build, book/executed and book/generated (keeps .venv)"

all: test book

venv:
	@set -e; \
	if [ ! -x "$(PY)" ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv "$(VENV)"; fi; \
	want="$$(cat requirements.txt requirements-nodeps.txt pyproject.toml | "$(PY)" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"; \
	if [ "$$(cat "$(STAMP)" 2>/dev/null)" = "$$want" ]; then \
		echo "$(VENV) is up to date (requirements files and pyproject.toml unchanged)"; \
	else \
		echo "installing requirements into $(VENV) (takes minutes on a fresh machine)"; \
		"$(PY)" -m pip install -r requirements.txt; \
		"$(PY)" -m pip install --no-deps -r requirements-nodeps.txt; \
		"$(PY)" -m pip install --no-deps -e .; \
		echo "$$want" > "$(STAMP)"; \
	fi

book: venv
	"$(PY)" -m tappa_utils.book build $(BOOK_ARGS)

test: venv
	"$(PY)" -m ruff check .
	"$(PY)" -m pytest $(PYTEST_ARGS)

lab: venv
	"$(PY)" -m tappa_utils.book lab $(LAB_ARGS)

params-table: venv
	"$(PY)" -m tappa_utils.book params-table --update-readme

clean:
	rm -rf _build book/executed book/generated
