# The two commands: `make test` and `make demo`. Both create/refresh .venv by themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dreamray-installed
TINY := .cache/tiny
RUNS := runs
DASHBOARD := http://127.0.0.1:8265
export HF_HUB_OFFLINE := 1
export DS_ACCELERATOR := cpu
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test test-slow test-e2e test-faults test-unit lint tiny world demo dry-run head stop-head clean

# The venv is rebuilt only when pyproject.toml or constraints.txt change. torch/torchvision go
# first, as the tested pair (see docs/ARCHITECTURE.md, "Install").
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# CI's command: the unit and ray tiers. The e2e tier (whole tiny recipe as Ray jobs on a
# two-node local cluster, ~10+ min on 2 cores) runs with `make test-e2e`; the ray tier's runs
# of many gangs (the sweep, a stage per LLM family: ~12 min on 2 cores) with `make test-slow`.
test: venv
	$(PY) -m pytest tests/unit tests/ray -q -m "not faults and not slow"

test-slow: venv
	$(PY) -m pytest tests/ray -q -m "slow and not faults"

test-e2e: venv
	$(PY) -m pytest tests/e2e -q -m "not faults"

# The fault matrix's long injections (docs/ARCHITECTURE.md, "Fault matrix"): a worker node
# killed mid-stage on the two-node local cluster, the run dir on a local S3 server. The quick
# rows (damaged checkpoints, preemption, ENOSPC, bad rows, leases) run in `make test`.
test-faults: venv
	$(PY) -m pytest tests/ray tests/e2e -q -m faults

test-unit: venv
	$(PY) -m pytest tests/unit -q

lint: venv
	$(VENV)/bin/ruff check .

# The GPU check (docs/gpu_check.md): a ~1B stage-II step's MFU under ZeRO-2, generation and FID
# feature img/s, dag_parallel on 16 CPUs; < 8 min on one H100. The script picks DeepSpeed's
# accelerator itself (this file exports cpu). GPU_CHECK_PY=python3 on a machine without .venv;
# GPU_CHECK_ARGS=--tiny for the CPU mode.
GPU_CHECK_PY ?= $(PY)
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_CHECK_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Tiny assets under .cache/tiny (idempotent): the random zoo, the converted synthetic shards
# and the evaluation sets (COCO captions + reference images, TextVQA) that tiny.yaml reads,
# and the world (below).
tiny: venv world
	$(PY) -m dreamray.zoo tiny --out $(TINY)/zoo
	$(PY) -m dreamray.data.tiny --out $(TINY)/data
	$(PY) -m dreamray.evals.tiny --out $(TINY)/evals

# The shapes world under .cache/tiny/world (idempotent): its sources converted to shards, its
# COCO-captions / VQAv2 eval sets and the world zoo pretrained on it (~7 min on 2 cores), all
# that toy.yaml reads.
world: venv
	$(PY) -m dreamray.data.world --out $(TINY)/world/data
	$(PY) -m dreamray.evals.world_sets --out $(TINY)/world/evals
	$(PY) -m dreamray.world_zoo --out $(TINY)/world/zoo

DEMO_RECIPE := pipelines/recipes/toy.yaml

dry-run: world
	$(PY) pipelines/full_recipe.py --recipe $(DEMO_RECIPE) --run-dir $(RUNS)/toy --dry-run

# The toy recipe (the shapes world, pretrained world zoo) as a Ray job on a local head (token
# auth on, dashboard on 127.0.0.1): start the head (kept running afterwards: `make stop-head`),
# submit, wait, say where things are. report.md's learning table compares the base model,
# stage II and SFT.
demo: dry-run
	bash cluster/local_head.sh start
	bash cluster/submit.sh $(DEMO_RECIPE) $(RUNS)/toy
	@echo "dashboard: $(DASHBOARD)  (jobs, Train runs; token: ~/.ray/auth_token)"
	@echo "report:    $(CURDIR)/$(RUNS)/toy/report.md"

head: venv
	bash cluster/local_head.sh start

stop-head:
	bash cluster/local_head.sh stop

clean:
	rm -rf $(TINY) $(RUNS)
