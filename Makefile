# Two commands matter: `make run` (gateway + demo service, no Redis needed) and `make test` (every test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CKSUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
# One stamp per install, each redone when pyproject.toml changes: `make run` needs the runtime only (no
# mypy, ruff, pip-audit, hadolint before the first answer); `make perf`/`bench` add the load tooling's extra;
# `make test`/`lint` add the development tools (and the perf extra: tests/perf exercises it).
RUNTIME_STAMP := $(VENV)/.runtime-$(CKSUM)
PERF_STAMP := $(VENV)/.perf-$(CKSUM)
STAMP := $(VENV)/.installed-$(CKSUM)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint schema docs perf vegeta bench soak docker test-tools clean

$(RUNTIME_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip  # pays for itself: the bundled pip 23.2 used ~20% more CPU
	$(BIN)/python -m pip install -q -e .
	@rm -f $(VENV)/.runtime-*; touch $(RUNTIME_STAMP)

$(PERF_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[perf]'
	@rm -f $(VENV)/.runtime-* $(VENV)/.perf-*; touch $(RUNTIME_STAMP) $(PERF_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,perf]'
	@rm -f $(VENV)/.runtime-* $(VENV)/.perf-* $(VENV)/.installed-*; touch $(RUNTIME_STAMP) $(PERF_STAMP) $(STAMP)

# The demo: fake payment provider (:8002), the thin upstream service (:8001), the gateway (:8000).
# Ctrl-C stops all three.
run: $(RUNTIME_STAMP)
	@echo "gateway http://127.0.0.1:8000  upstream http://127.0.0.1:8001  payment provider http://127.0.0.1:8002"
	@$(BIN)/python -m upstream_app.provider --port 8002 & p1=$$!; \
	PAYMENT_PROVIDER_URL=http://127.0.0.1:8000/egress/payments $(BIN)/python -m upstream_app --port 8001 & p2=$$!; \
	$(BIN)/python -m gateway serve --policy policies.yaml --port 8000 & p3=$$!; \
	trap 'kill -TERM $$p1 $$p2 $$p3 2>/dev/null; wait; exit 0' INT TERM; \
	wait

# Tests talk to a real redis-server, check alert rules with promtool and drive the ops console in headless
# Chromium; where the machine lacks one, install the Debian package (redis-server, prometheus, chromium and
# chromium-driver) and say so.
test-tools:
	@command -v redis-server >/dev/null || { \
	  echo "make test: no redis-server on PATH: installing the Debian package redis-server"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@command -v promtool >/dev/null || { \
	  echo "make test: no promtool on PATH: installing the Debian package prometheus (for promtool)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v openssl >/dev/null || { \
	  echo "make test: no openssl on PATH: installing the Debian package openssl (the TLS tests make certificates)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq openssl >/dev/null; }
	@# The ops console's browser tests: Debian's Chromium and its chromedriver (never a downloaded browser).
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  echo "make test: no /usr/bin/chromium or /usr/bin/chromedriver: installing the Debian packages chromium chromium-driver"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: $(STAMP) test-tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway upstream_app tests perf
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/vulture
	$(BIN)/hadolint Dockerfile
	@# --strict: a dependency that could not be checked is a failure, not a silent "no known vulnerabilities".
	@$(BIN)/pip-audit --strict --skip-editable --progress-spinner off || { \
	  echo "make lint: pip-audit failed: a known vulnerability, or the advisory service (PyPI JSON API / OSV)"; \
	  echo "           is unreachable from this machine and nothing could be audited; see the lines above"; exit 1; }

# The policy's JSON Schema and its Markdown reference, both generated from gateway/policy/model.py (tests fail
# when either committed file differs from what the model gives).
schema: $(RUNTIME_STAMP)
	$(BIN)/python -m gateway schema > config/policy.schema.json
	@mkdir -p docs
	$(BIN)/python -m gateway schema --markdown > docs/policy-reference.md

docs: schema

# A load run judged against the SLOs (vegeta when on PATH, else the built-in attacker): make perf SCENARIO=abuse
SCENARIO ?= steady
perf: $(PERF_STAMP) test-tools vegeta
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m gateway perf run $(SCENARIO)

# vegeta for load runs: the one on PATH, else built from source by the Go toolchain into the venv (never a
# downloaded binary); without Go either, the built-in attacker runs the load and `make perf` says so.
VEGETA_MODULE := github.com/tsenart/vegeta/v12@v12.13.0
vegeta: $(PERF_STAMP)
	@command -v vegeta >/dev/null || test -x $(BIN)/vegeta || { \
	  if command -v go >/dev/null; then \
	    echo "make perf: no vegeta on PATH: go install $(VEGETA_MODULE) (GOBIN=$(BIN))"; \
	    GOBIN="$(abspath $(BIN))" go install $(VEGETA_MODULE); \
	  else echo "make perf: neither vegeta nor go on PATH: the built-in attacker runs the load"; fi; }

# The overhead benchmark (not a test): direct vs bare aiohttp proxy vs the gateway vs nginx; see perf/README.md.
bench: $(PERF_STAMP) test-tools
	$(BIN)/python -m perf.bench_overhead

# A 10-minute soak at about half capacity with reloads and a Redis restart (SOAK_SECONDS, SOAK_RATE to change).
soak: $(STAMP) test-tools
	$(BIN)/python -m pytest -q -s -m soak tests/reliability/test_soak.py

docker:
	docker build -t resilience-gateway .

clean:
	rm -rf $(VENV) data *.egg-info
