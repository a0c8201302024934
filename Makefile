# clarity: `make help` lists the targets. Quick start: `make report`, then `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= $(shell command -v python3.11 || command -v python3)
VENV     ?= .venv
PY       := $(VENV)/bin/python
# CPU build by default; GPU users: make report TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<your wheel index>
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DATA_DIR ?= data
RUN      ?= default
SEED     ?= 0
PARAMS   ?=
SMOKE_DIR ?= /tmp/clarity-smoke
REAL_DATA_DIR ?= data/delivr_cfos
REAL_RUN ?= real
REAL_PARAMS ?= notebooks/params/real.yaml
MICROGLIA_DATA_DIR ?= data/delivr_microglia
MICROGLIA_PARAMS ?= notebooks/params/microglia.yaml
STAMP    := $(VENV)/.installed

REPORT_ARGS := --data-dir $(DATA_DIR) --run $(RUN) --seed $(SEED) $(if $(PARAMS),--params $(PARAMS),)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

.PHONY: help
help: ## List the targets (variables: DATA_DIR, RUN, SEED, PARAMS, TORCH_SPEC)
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: $(STAMP) ## Create .venv and install clarity with pinned torch (TORCH_SPEC)

.PHONY: data
data: $(STAMP) ## Build the default synthetic dataset in DATA_DIR (8 brains, kept if present)
	$(PY) -m clarity make-data --data-dir $(DATA_DIR) --seed $(SEED) $(if $(PARAMS),--params $(PARAMS),)

.PHONY: report
report: $(STAMP) ## Main job: build data if DATA_DIR/raw is empty, run the notebooks into reports/RUN
	$(PY) -m clarity report $(REPORT_ARGS)

.PHONY: report-real
report-real: $(STAMP) ## The real report: the human-labelled light-sheet brains of datasets/delivr_cfos (copied to REAL_DATA_DIR), leave one brain out
	@test -d $(REAL_DATA_DIR)/raw || (mkdir -p $(dir $(REAL_DATA_DIR)) && cp -r datasets/delivr_cfos $(REAL_DATA_DIR))
	$(PY) -m clarity report --data-dir $(REAL_DATA_DIR) --run $(REAL_RUN) --seed $(SEED) --params $(REAL_PARAMS)

.PHONY: report-microglia
report-microglia: $(STAMP) ## The second marker: 64 volumes of 8 samples, microglia somata (datasets/delivr_microglia copied to MICROGLIA_DATA_DIR), 4 folds by sample (reports/microglia)
	@test -d $(MICROGLIA_DATA_DIR)/raw || (mkdir -p $(dir $(MICROGLIA_DATA_DIR)) && cp -r datasets/delivr_microglia $(MICROGLIA_DATA_DIR))
	$(PY) -m clarity report --data-dir $(MICROGLIA_DATA_DIR) --run microglia --seed $(SEED) --params $(MICROGLIA_PARAMS)

.PHONY: report-real40
report-real40: ## The real report in the seed's setting: trained on a seeded 40 % of the labels (reports/real40)
	$(MAKE) report-real REAL_RUN=real40 REAL_PARAMS=notebooks/params/real40.yaml

.PHONY: smoke
smoke: $(STAMP) ## The whole report on tiny data with notebooks/params/smoke.yaml (SMOKE_DIR)
	$(PY) -m clarity report --data-dir $(SMOKE_DIR)/data --run smoke --params notebooks/params/smoke.yaml \
	  --reports-root $(SMOKE_DIR)/reports --models-root $(SMOKE_DIR)/models

LAB_PORT  ?= 8888
LAB_STAMP := $(VENV)/.lab-installed

$(LAB_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[dev,lab]"
	@touch $(LAB_STAMP)

.PHONY: lab
lab: $(LAB_STAMP) ## JupyterLab on notebooks/ at http://127.0.0.1:LAB_PORT (default 8888; open the printed URL)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --ip=127.0.0.1 --port=$(LAB_PORT) \
	  --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: test
test: $(STAMP) ## Run the test suite (notebooks included, on tiny data)
	$(PY) -m pytest

.PHONY: bench
bench: $(STAMP) ## Print speed and memory figures (training, inference, whole-volume detection)
	$(PY) bench/bench_model.py
	$(PY) bench/bench_detect.py

.PHONY: stress
stress: $(STAMP) ## Same cells every time: repeated detection on threads, processes and a dask cluster
	$(PY) bench/stress_detect.py

BENCH_SCALE_ARGS ?=

.PHONY: bench-scale
bench-scale: $(STAMP) ## Peak memory and time against size: clarity detect on the bench volume and its 1.07 / 4.3 Gvox mirrors (OME-Zarr in DATA_DIR/bench, up to 11 GB); BENCH_SCALE_ARGS="--kill-at 0.5" adds the resume check
	$(PY) bench/bench_scale.py --cache $(DATA_DIR)/bench $(BENCH_SCALE_ARGS)

.PHONY: strip
strip: $(STAMP) ## Strip outputs from the committed notebooks
	$(VENV)/bin/nbstripout --keep-metadata-keys cell.metadata.tags notebooks/*.ipynb

.PHONY: clean
clean: ## Remove generated data, models and reports of RUN (raw data is kept)
	rm -rf $(DATA_DIR)/interim $(DATA_DIR)/processed models/$(RUN) reports/$(RUN)
