# neuron-groups: the developer entry points.  `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
# The folder operator/ would shadow the standard library's `operator` if the working directory were put
# on sys.path (python -m does that): safe-path mode keeps it off.
export PYTHONSAFEPATH := 1
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PACKAGES := neuron_cores neuron_runtime neuron_device_plugin neuron_operator neuron_localcluster neuron_dra_driver
# AUTOSCALER=karpenter: `make cluster-up`/`make demo` start Karpenter's kwok provider (built once from hack/karpenter)
# and no static Neuron node; Karpenter adds nodes when NeuronWorkload pods wait for them.
AUTOSCALER ?=
AUTOSCALER_FLAG := $(if $(AUTOSCALER),--autoscaler $(AUTOSCALER))
# package name -> folder; mypy cannot follow setuptools' package-dir mapping, so it reads a link tree.
# How local-cluster nodes offer NeuronCores: device-plugin (default) or dra (`make demo ALLOCATION=dra`).
ALLOCATION ?= $(or $(NEURON_GROUPS_ALLOCATION),device-plugin)
TYPECHECK_LINKS := neuron_cores:cores neuron_runtime:runtime neuron_device_plugin:device_plugin neuron_operator:operator neuron_localcluster:localcluster neuron_dra_driver:dra_driver

.PHONY: setup lint format typecheck unit test bench demo cluster-up cluster-down clean deploy-render

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP) ## create .venv with the project and its test tools

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: setup ## mypy --strict over every package, the tests and the benchmarks
	@rm -rf .typecheck && mkdir -p .typecheck
	@for pair in $(TYPECHECK_LINKS); do ln -s ../$${pair#*:} .typecheck/$${pair%%:*}; done
	MYPYPATH=.typecheck $(VENV)/bin/mypy $(addprefix .typecheck/,$(PACKAGES)) tests $(wildcard bench/*.py)

unit: setup ## the tests that need no local control plane
	$(PY) -m pytest -m 'not cluster'

test: lint typecheck ## everything: lint, types, and every test including the local control plane
	$(PY) -m pytest

bench: setup ## every benchmark under bench/, each printing ratios against a peer measured in the same run
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

deploy-render: setup ## render deploy/*.yaml from charts/neuron-groups (tests check they are current)
	$(PY) deploy/render.py

cluster-up: setup ## start the local control plane (etcd, apiserver, controller-manager, scheduler, kwok, emulated node); kubeconfig in .cluster/kubeconfig
	$(VENV)/bin/neuron-localcluster up --allocation $(ALLOCATION) $(AUTOSCALER_FLAG)

cluster-down: ## stop every process of the local control plane
	@if [ -x $(VENV)/bin/neuron-localcluster ]; then $(VENV)/bin/neuron-localcluster down; fi

demo: setup ## build/reuse the control plane, install the chart, run the seed's scenarios, print cores and an inference
	$(VENV)/bin/neuron-localcluster demo --allocation $(ALLOCATION) $(AUTOSCALER_FLAG)

clean:
	rm -rf .typecheck .mypy_cache .ruff_cache .pytest_cache build
