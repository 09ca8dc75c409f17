# Damselfly build and test entry points. `make test` is what CI runs.
GO ?= go
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GOBIN ?= $(shell $(GO) env GOPATH)/bin
BIN := bin
PROTOS := api/schedulerv1/scheduler.proto api/peerv1/peer.proto api/daemonv1/daemon.proto api/managerv1/manager.proto

.PHONY: all build run test test-unit deps proto bench bench-swarm vet fmt clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# run starts an all-in-one node (scheduler + seed peer + daemon) on the
# embedded defaults; as root it uses /var/lib/damselfly and
# /var/run/damselfly/daemon.sock (dfget's default socket).
run: build
	./$(BIN)/damselfly all-in-one $(ARGS)

# deps installs what the tests need on a fresh Debian machine (idempotent).
deps:
	./scripts/install-deps.sh

test: deps build
	./scripts/test.sh

test-unit:
	$(GO) test ./...

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || (echo "gofmt needed:"; gofmt -l .; exit 1)

fmt:
	gofmt -w .

proto:
	@command -v protoc >/dev/null || (echo "protoc missing: apt-get install protobuf-compiler"; exit 1)
	GOBIN=$(GOBIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(GOBIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(GOBIN):$$PATH protoc -I . --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative $(PROTOS)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

bench-swarm: build
	./test/swarm/run.sh $(ARGS)

clean:
	rm -rf $(BIN)
