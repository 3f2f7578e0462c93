# credmatrix — one Makefile for the whole workspace.
#
#   make demo    build, start the local stack, run the CI-runner story, stop
#   make test    every test of every module
#   make lint    gofmt, go vet, staticcheck, buf lint/format/breaking, generated
#                code up to date, the chart
#   make proto   regenerate Go from proto/
#   make run     the local stack in the foreground until Ctrl-C
#   make bench   the real binaries under load: one BENCH line per figure, then a table
#                (BENCH_DURATION=20s per figure); make bench-go: every go test benchmark
#   make soak    sustained mixed load against the real binaries (SOAK=10m): resources
#                at start and end, errors
#   make fuzz    every fuzz target briefly (FUZZTIME=10s each)
#   make chart-check   helm lint + template of deploy/helm/credmatrix (part of lint)
#   make images-bin    the static linux/amd64 and linux/arm64 binaries the
#                      container images hold
#   make release-check VERSION=v0.x.y   install the CLI and build an app against
#                      the client libraries from a module proxy of this tree
#   make tidy          go mod tidy of every module (siblings at MODULE_VERSION)
#   make dist VERSION=v0.x.y   the release binaries in dist/: credmatrix for
#                      linux/darwin (amd64, arm64) and windows/amd64, the services
#                      for linux (amd64, arm64); SHA256SUMS and a CycloneDX SBOM;
#                      checked after the build (make verify-dist checks again)
#   make cluster-test  3 brokers, 2 keyguards, 2 audit replicas as processes on one
#                      PostgreSQL: propagation, kill -9, IAM on 100 roles, CPU per
#                      operation; prints a table (a few minutes)
#
# The patched toolchain is fetched by the go command from the module proxy.
export GOTOOLCHAIN := go1.26.10
export GOFLAGS := -buildvcs=false

MODULES   := proto platform services/audit services/broker services/keyguard clients clients/cmd/credmatrix clients/cmd/credmatrix-dev deploy
# MODULE_VERSION is the version the modules require each other at (go.mod
# files, with go.work resolving it to the directories); `make tidy` keeps
# them in step. A release tags every module at it.
MODULE_VERSION := v0.1.0
# release-check checks VERSION when given on the command line.
RELEASE_VERSION = $(if $(filter command line,$(origin VERSION)),$(VERSION),$(MODULE_VERSION))
RELEASE    = $(BIN)/release
PKGS      := $(addsuffix /...,$(addprefix ./,$(MODULES)))
BIN       := $(CURDIR)/bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BUF       := $(BIN)/buf
# staticcheck, pinned in tools/staticcheck/go.mod (a tool line), built into bin/.
STATICCHECK := $(BIN)/staticcheck
# buf breaking compares proto/ with this: the main branch of this clone (the
# local branch, else origin/main, as in a CI checkout that has no local
# main). Against a release: make lint BREAKING_AGAINST='.git#tag=v0.1.0'
# (in a shallow clone, first: git fetch --depth=1 origin tag v0.1.0).
BREAKING_AGAINST ?= $(shell git rev-parse -q --verify refs/heads/main >/dev/null && echo '.git#branch=main' || echo '.git#ref=origin/main')
HELM      := $(BIN)/helm
# local-kms: a real AWS KMS implementation the awskms tests run against.
LOCAL_KMS := $(BIN)/local-kms
LOCAL_KMS_VERSION := v0.0.0-20260228092603-2a5e92d09ab6
HELM_VERSION := v3.22.0
CHART     := deploy/helm/credmatrix
# The architectures of the container images (docker buildx --platform).
IMAGE_ARCHES := amd64 arm64
GO_TEST_FLAGS ?= -race -count=1 -timeout 15m

.PHONY: all build demo run test lint proto proto-check fmt bench bench-go bench-bin soak fuzz tools clean setup helm chart-check images-bin release-check tidy dist verify-dist cluster-test

all: lint test

build:
	@mkdir -p $(BIN)
	go build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ ./services/audit/cmd/audit ./services/broker/cmd/broker ./services/keyguard/cmd/keyguard ./clients/cmd/credmatrix ./clients/cmd/credmatrix-dev

demo: build
	@scripts/demo.sh

run: build
	$(BIN)/credmatrix-dev

# The chart tests (deploy/helm) run the helm binary.
# Tests that need a tool they cannot find skip, each saying how to get it;
# go test hides the messages of passing packages, so they are collected in
# SKIP_REPORT (platform/pgtest.MissingDependency) and listed at the end.
SKIP_REPORT := $(BIN)/test-skips.txt
test: $(HELM) $(LOCAL_KMS)
	@rm -f $(SKIP_REPORT)
	@CREDMATRIX_SKIP_REPORT=$(SKIP_REPORT) CREDMATRIX_HELM=$(HELM) CREDMATRIX_LOCAL_KMS=$(LOCAL_KMS) go test $(GO_TEST_FLAGS) $(PKGS); rc=$$?; \
	if [ -s $(SKIP_REPORT) ]; then echo; echo "Skipped for a missing test dependency (CI sets CREDMATRIX_REQUIRE_DEPS=1 and fails instead):"; sort -u $(SKIP_REPORT) | sed 's/^/  /'; fi; exit $$rc

# bench and soak start audit, broker and keyguard as processes of the
# binaries in bin/ (embedded defaults, mTLS) and drive them from
# credmatrix-bench (clients/cmd/credmatrix-dev/credmatrix-bench); BENCH_FLAGS passes
# more flags (e.g. -only issue_session -profile /tmp/prof: CPU profiles of each
# process; bin/credmatrix-bench -h lists them).
BENCH_DURATION ?= 20s
SOAK ?= 10m

bench-bin: build
	go build -o $(BIN)/ ./clients/cmd/credmatrix-dev/credmatrix-bench

bench: bench-bin
	$(BIN)/credmatrix-bench -bin-dir $(BIN) -duration $(BENCH_DURATION) $(BENCH_FLAGS)

soak: bench-bin
	$(BIN)/credmatrix-bench soak -bin-dir $(BIN) -duration $(SOAK)

# bench-go: every `go test` benchmark of every module, in process.
bench-go:
	go test -run '^$$' -bench . -benchmem $(PKGS)

# The harness builds with the cluster tag only (make test skips it); it
# writes its table to stdout and, with CREDMATRIX_CLUSTER_REPORT, a file.
cluster-test: $(LOCAL_KMS)
	CREDMATRIX_LOCAL_KMS=$(LOCAL_KMS) go test -tags cluster -count=1 -timeout 20m -v -run '^TestCluster$$' ./deploy/clustertest

fuzz:
	scripts/fuzz.sh

$(BUF): tools/buf/go.mod tools/buf/go.sum
	@mkdir -p $(BIN)
	GOWORK=off go -C tools/buf build -o $(BUF) github.com/bufbuild/buf/cmd/buf

$(STATICCHECK): tools/staticcheck/go.mod tools/staticcheck/go.sum
	@mkdir -p $(BIN)
	GOWORK=off go -C tools/staticcheck build -o $(STATICCHECK) honnef.co/go/tools/cmd/staticcheck

# helm, built from source through the module proxy (~90 s once), then cached
# as a file: make rebuilds it only when HELM_VERSION changes.
$(HELM): Makefile
	@mkdir -p $(BIN)
	@if [ -x $@ ] && go version -m $@ 2>/dev/null | grep -q 'mod[[:space:]]*helm.sh/helm/v3[[:space:]]*$(HELM_VERSION)[[:space:]]'; then touch $@; else \
		echo "go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)"; \
		GOWORK=off GOBIN=$(BIN) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); fi

helm: $(HELM)

tools: $(BUF) $(STATICCHECK) $(HELM) $(LOCAL_KMS)

# Built outside the workspace (GOWORK=off, from bin/), so it never touches
# our go.mod files.
$(LOCAL_KMS):
	@mkdir -p $(BIN)
	cd $(BIN) && GOWORK=off GOBIN=$(BIN) go install github.com/nsmithuk/local-kms@$(LOCAL_KMS_VERSION)

# chart-check lints the chart strictly and renders it with the default and
# the production-like values (and the GitHub-hosted runners overlay); bad
# values fail here through values.schema.json.
chart-check: $(HELM)
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/production-values.yaml
	$(HELM) template credmatrix $(CHART) --namespace credmatrix > /dev/null
	$(HELM) template credmatrix $(CHART) --namespace credmatrix -f $(CHART)/ci/production-values.yaml > /dev/null
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/production-values.yaml -f $(CHART)/ci/github-runners-values.yaml
	$(HELM) template credmatrix $(CHART) --namespace credmatrix -f $(CHART)/ci/production-values.yaml -f $(CHART)/ci/github-runners-values.yaml > /dev/null

# images-bin builds exactly what deploy/docker/Dockerfile puts in the images,
# for each image architecture: static (CGO_ENABLED=0), trimmed, stripped.
images-bin:
	@for arch in $(IMAGE_ARCHES); do mkdir -p $(BIN)/linux-$$arch; \
		echo "linux/$$arch:"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build -trimpath -ldflags="-s -w" -o $(BIN)/linux-$$arch/ \
			./services/audit/cmd/audit ./services/broker/cmd/broker ./services/keyguard/cmd/keyguard ./deploy/cmd/credmatrix-probe || exit 1; \
		for f in $(BIN)/linux-$$arch/*; do \
			go version -m $$f | grep -q 'CGO_ENABLED=0' || { echo "$$f is not static" >&2; exit 1; }; \
			go version -m $$f | grep -q "GOARCH=$$arch" || { echo "$$f is not linux/$$arch" >&2; exit 1; }; \
		done; \
		ls -l $(BIN)/linux-$$arch/; \
	done

proto: $(BUF)
	$(BUF) format -w
	$(BUF) generate

# proto-check fails when the committed generated code is stale.
proto-check: $(BUF)
	$(BUF) generate
	@git diff --exit-code -- proto || { echo "generated code is out of date: run 'make proto' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- proto)" || { git status --porcelain -- proto; echo "make proto created untracked files: commit them" >&2; exit 1; }

lint: $(BUF) $(STATICCHECK)
	@out=$$(gofmt -l $(MODULES) tools); if [ -n "$$out" ]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi
	go vet $(PKGS)
	go vet -tags cluster ./deploy/clustertest
	$(STATICCHECK) $(PKGS)
	cd tools/release && GOWORK=off go vet ./... && GOWORK=off $(STATICCHECK) ./...
	$(STATICCHECK) -tags cluster ./deploy/clustertest
	$(BUF) lint
	$(BUF) format -d --exit-code
	$(BUF) breaking --against '$(BREAKING_AGAINST)'
	@$(MAKE) --no-print-directory proto-check
	@$(MAKE) --no-print-directory chart-check

fmt:
	gofmt -w $(MODULES)
	$(BUF) format -w

setup:
	scripts/setup.sh

# The release tool (tools/release, a module of its own outside the
# workspace) builds module proxies of this tree.
$(RELEASE): $(wildcard tools/release/*.go) tools/release/go.mod tools/release/go.sum
	@mkdir -p $(BIN)
	GOWORK=off go -C tools/release build -o $(RELEASE) .

# release-check: a file-system module proxy of this tree at RELEASE_VERSION;
# then, outside the workspace, go install of the CLI at that version and an
# external module that imports and tests the client libraries.
release-check: $(RELEASE)
	cd tools/release && GOWORK=off go test -count=1 ./...
	$(RELEASE) check -version $(RELEASE_VERSION)

tidy: $(RELEASE)
	$(RELEASE) tidy -version $(MODULE_VERSION)

# dist: the release binaries, static (CGO_ENABLED=0), -trimpath, stripped
# (-s -w), stamped with VERSION (-X), with SHA256SUMS and sbom.cdx.json (the
# modules each binary links, read from its build information); then every
# file, checksum, build setting and SBOM entry is checked. The GitHub Action
# downloads these files from the release of its version.
DIST := $(CURDIR)/dist
dist: $(RELEASE)
	$(RELEASE) dist -version $(VERSION) -out $(DIST)
	@ls -l $(DIST)

verify-dist: $(RELEASE)
	$(RELEASE) verify-dist -version $(VERSION) -dir $(DIST)

clean:
	rm -rf $(BIN) $(DIST)
