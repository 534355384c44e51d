# vislang workspace. `make demo` and `make test` install what they need on first use (Python 3.11,
# torch and torchvision pinned and installed first, then shared/ and every packages/* editable) and
# nothing afterwards, until a pyproject.toml changes.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.vislang-installed
PACKAGES := $(sort $(wildcard packages/*/pyproject.toml))
PYTEST_ARGS ?=

.PHONY: install demo test test-full lint bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml shared/pyproject.toml constraints.txt $(PACKAGES)
	$(PIP) install --disable-pip-version-check -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install --disable-pip-version-check -c constraints.txt -e shared $(foreach p,$(PACKAGES),-e $(dir $(p))) -e ".[dev]"
	touch $(STAMP)

# The project's main job on its embedded default: VLAB trained on the synthetic world's videos, then its
# held-out text-to-video R@1 and QA accuracy beside their chance levels (and the world's contact sheet).
demo: $(STAMP)
	$(PY) -m vislang.shared.data.synthetic preview --out demo_outputs/synthetic_preview.png
	$(VENV)/bin/lightning fit --config packages/vlab/configs/demo.yaml

# One package's demo: `make demo-cmae`, `make demo-pixellm`, `make demo-soho`, ... (packages/<name>/configs/demo.yaml).
demo-%: $(STAMP)
	$(VENV)/bin/lightning fit --config packages/$*/configs/demo.yaml

# CMAE's demo is a driver (a script, not library code): two seeds x (CMAE, plain MAE) pre-trainings of configs/demo.yaml, two at a time,
# each followed by few-label fine-tuning and probes, then one table (packages/cmae/README.md, "Demo").
demo-cmae: $(STAMP)
	$(PY) packages/cmae/scripts/demo.py

# The VQA entry's demo is a driver script: train a detector, extract features to stores, train two members, ensemble.
demo-vqa_ensemble: $(STAMP)
	$(PY) packages/vqa_ensemble/scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-full: $(STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check shared packages tests benchmarks
	$(PY) -m ruff format --check shared packages tests benchmarks

bench: $(STAMP)
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) demo_outputs lightning_logs
