# chatmesh — run `make` for the list of targets.
SHELL := bash
.DEFAULT_GOAL := help
BIN := node_modules/.bin
# buf finds protoc-gen-es on PATH.
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)
STAMP := node_modules/.chatmesh-installed
TEXT ?= 这是一条最小链路测试
BREAKING_AGAINST ?= .git\#branch=main

.PHONY: help install generate checkgenerate lint breaking test test-faults soak run-all client bench bench-go bench-micro bench-quota build deploy-check

help: ## Describe the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): package.json package-lock.json
	npm ci --prefer-offline
	@touch $@

install: $(STAMP) ## Install dependencies when package-lock.json changed

generate: $(STAMP) ## Regenerate gen/ from proto/ (buf generate)
	$(BIN)/buf generate

checkgenerate: generate ## Fail when gen/ differs from a fresh buf generate
	@test -z "$$(git status --porcelain -- gen)" || \
		{ git status --porcelain -- gen; echo "gen/ is stale: run 'make generate' and commit it"; exit 1; }

lint: $(STAMP) ## buf lint, type check, and Biome (zero warnings)
	$(BIN)/buf lint
	$(BIN)/tsc --noEmit
	$(BIN)/biome check --error-on-warnings .

breaking: $(STAMP) ## buf breaking against main (BREAKING_AGAINST to change)
	$(BIN)/buf breaking --against '$(BREAKING_AGAINST)'

test: $(STAMP) ## Run every test (Redis/MySQL tests skip when unreachable, outside CI)
	$(BIN)/vitest run

test-faults: $(STAMP) ## Kill and restart each process and store under load (also part of make test)
	$(BIN)/vitest run test/faults

# The benchmarks and the soak run under node itself, not the tsx command: on
# a Ctrl-C that one SIGKILLs its child when it has not answered within 60 ms,
# before the bench has stopped the processes it started.
soak: $(STAMP) ## Mixed load for SOAK_SECONDS (600): RSS and event-loop delay per process, leak check
	@node --import tsx bench/soak.ts

run-all: generate ## Start every process with embedded defaults; Ctrl-C stops them
	@node bin/chatmesh.js run-all

# TEXT reaches the client through the environment, as typed: in the recipe
# make would expand its $ and the shell its quotes, backquotes and $(…).
client: export CHATMESH_CLIENT_TEXT := $(value TEXT)
client: $(STAMP) ## The seed's client: make client TEXT="…"
	@node bin/chatmesh.js client "$$CHATMESH_CLIENT_TEXT"

bench: build ## Load benchmark of the whole chain (from dist/) vs a bare Fastify ceiling (autocannon)
	node --import tsx bench/chain-bench.ts
	@node --import tsx bench/quota-bench.ts
	@node --import tsx bench/micro-bench.ts

bench-go: build ## make bench with the seed's Go original beside the chain, same load, same run (needs Go: bench/go-reference/build.sh)
	node --import tsx bench/go-bench.ts

bench-micro: $(STAMP) ## Unary RPC per transport, and the filter's matcher with 10k terms
	@node --import tsx bench/micro-bench.ts

bench-quota: $(STAMP) ## CheckAndInc/s of the memory and redis quota stores (REDIS_URL)
	@node --import tsx bench/quota-bench.ts
build: $(STAMP) ## Type-check, then bundle src/ and gen/ into dist/ (what the image runs)
	npm run build

deploy-check: $(STAMP) ## Dockerfile steps, Compose and Kubernetes manifests, checked without Docker or a cluster
	$(BIN)/vitest run test/deploy
