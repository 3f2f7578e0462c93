# credmatrix — one Makefile for the whole workspace.
#
#   make demo    build, start the local stack, run the CI-runner story, stop
#   make test    every test of every module
#   make lint    gofmt, go vet, buf lint/format, generated code up to date
#   make proto   regenerate Go from proto/
#   make run     the local stack in the foreground until Ctrl-C
#   make bench   benchmarks
#   make fuzz    every fuzz target briefly (FUZZTIME=10s each)
#
# The patched toolchain is fetched by the go command from the module proxy.
export GOTOOLCHAIN := go1.26.10
export GOFLAGS := -buildvcs=false

MODULES   := proto platform services/audit services/broker services/keyguard clients
PKGS      := $(addsuffix /...,$(addprefix ./,$(MODULES)))
BIN       := $(CURDIR)/bin
BUF       := $(BIN)/buf
GO_TEST_FLAGS ?= -race -count=1 -timeout 15m

.PHONY: all build demo run test lint proto proto-check fmt bench fuzz tools clean setup

all: lint test

build:
	@mkdir -p $(BIN)
	go build -o $(BIN)/ ./services/audit/cmd/audit ./services/broker/cmd/broker ./services/keyguard/cmd/keyguard ./clients/cmd/credmatrix

demo: build
	@scripts/demo.sh

run: build
	$(BIN)/credmatrix dev

test:
	go test $(GO_TEST_FLAGS) $(PKGS)

bench:
	go test -run '^$$' -bench . -benchmem $(PKGS)

fuzz:
	scripts/fuzz.sh

$(BUF): tools/buf/go.mod tools/buf/go.sum
	@mkdir -p $(BIN)
	GOWORK=off go -C tools/buf build -o $(BUF) github.com/bufbuild/buf/cmd/buf

tools: $(BUF)

proto: $(BUF)
	$(BUF) format -w
	$(BUF) generate

# proto-check fails when the committed generated code is stale.
proto-check: $(BUF)
	$(BUF) generate
	@git diff --exit-code -- proto || { echo "generated code is out of date: run 'make proto' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- proto)" || { git status --porcelain -- proto; echo "make proto created untracked files: commit them" >&2; exit 1; }

lint: $(BUF)
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi
	go vet $(PKGS)
	$(BUF) lint
	$(BUF) format -d --exit-code
	@$(MAKE) --no-print-directory proto-check

fmt:
	gofmt -w $(MODULES)
	$(BUF) format -w

setup:
	scripts/setup.sh

clean:
	rm -rf $(BIN)
