# `make run`: environment + the whole default workflow. `make test`: environment + test suite.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# pytest-xdist workers for `make test` (a whole test file per worker: its module fixtures are built once).
TEST_WORKERS ?= 2
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: env run run-all run-msrc test test-slurm lint envs clean-results

env: $(VENV)/.synced

# uv keeps its cache in ~/.cache/uv: a fresh clone links the same files in a few seconds.
$(VENV)/.synced: pyproject.toml uv.lock
	@test -x "$(UV)" || python3 -m pip install --user --quiet uv
	"$(UV)" sync --frozen
	@touch $@

# Jobs call `python`: the environment's bin/ goes first on PATH (as `source .venv/bin/activate`).
# Then the HTML report of that run (results/report.html: tables, curves, bars, galleries).
run: env
	PATH="$(abspath $(BIN)):$$PATH" snakemake --profile profiles/local --cores $(CORES)
	PATH="$(abspath $(BIN)):$$PATH" snakemake --profile profiles/local --cores 1 --report results/report.html

# Every method on the default data (configs/all_methods.yaml, what `make run` ran before it became a
# demonstration): results/ as `make run`, report results/report-all.html.
ALL_RUN = snakemake --profile profiles/local --configfile configs/all_methods.yaml --replace-workflow-config
run-all: env
	PATH="$(abspath $(BIN)):$$PATH" $(ALL_RUN) --cores $(CORES)
	PATH="$(abspath $(BIN)):$$PATH" $(ALL_RUN) --cores 1 --report results/report-all.html

# The real-photo configuration (configs/msrc.yaml, MSRC-v2 at ../shared/data/msrc; docs/datasets.md,
# "MSRC-v2"), on its own (--replace-workflow-config: config.yaml is not merged in). It writes
# results/msrc/, results/summary.csv (its rows) and results/report-msrc.html.
MSRC_RUN = snakemake --profile profiles/local --configfile configs/msrc.yaml --replace-workflow-config
run-msrc: env
	PATH="$(abspath $(BIN)):$$PATH" $(MSRC_RUN) --cores $(CORES)
	PATH="$(abspath $(BIN)):$$PATH" $(MSRC_RUN) --cores 1 --report results/report-msrc.html

test: env
	$(BIN)/ruff check wsss_steps tests benchmarks diagnostics
	$(BIN)/snakemake --lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# A one-node SLURM cluster on localhost (installs slurm-wlm and munge when missing; root or sudo):
# the tiny workflow through --executor slurm equals a local run. See tests/slurm/test_slurm.sh.
test-slurm: env
	bash tests/slurm/test_slurm.sh

lint: env
	$(BIN)/ruff check wsss_steps tests benchmarks diagnostics
	$(BIN)/snakemake --lint

# Regenerates the conda environment file from the lock (keeps envs/ and uv.lock consistent).
envs: env
	$(BIN)/python envs/export_conda_env.py > envs/wsss.yaml

clean-results:
	rm -rf results logs .snakemake/incomplete
