# Damselfly build and test entry points. `make test` is what CI runs.
GO ?= go
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GOBIN ?= $(shell $(GO) env GOPATH)/bin
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
PLATFORMS ?= linux/amd64,linux/arm64
IMAGE_LAYOUT := $(BIN)/images/damselfly
LDFLAGS := -s -w -X main.Version=$(VERSION) -X main.version=$(VERSION)
PROTOS := api/schedulerv1/scheduler.proto api/peerv1/peer.proto api/daemonv1/daemon.proto api/managerv1/manager.proto

.PHONY: all build run test test-unit deps proto bench bench-swarm bench-sim cdfplot vet fmt clean dist images push

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# run starts an all-in-one node (scheduler + seed peer + daemon) on the
# embedded defaults; as root it uses /var/lib/damselfly and
# /var/run/damselfly/daemon.sock (dfget's default socket).
run: build
	./$(BIN)/damselfly all-in-one $(ARGS)

# dist builds static binaries (CGO_ENABLED=0; the SQLite driver is pure Go)
# for every platform in PLATFORMS under bin/dist/<os>_<arch>/.
dist:
	@set -e; for p in $$(echo $(PLATFORMS) | tr , ' '); do \
		os=$${p%/*}; arch=$${p#*/}; \
		echo "dist: $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" \
			-o $(BIN)/dist/$${os}_$${arch}/ ./cmd/damselfly ./cmd/dfget ./cmd/dfcache; \
	done

# images writes one OCI image index (one image per platform, all binaries,
# non-root user, OCI labels) as an OCI layout under bin/images/damselfly,
# with go-containerregistry (tools/image): no Docker needed.
images: dist
	cd tools/image && $(GO) run . build --bin-dir ../../$(BIN)/dist --out ../../$(IMAGE_LAYOUT) \
		--platforms $(PLATFORMS) --version $(VERSION) --revision $(REVISION) --created $(SOURCE_DATE_EPOCH)

# push copies the layout to REGISTRY (host[:port]/repo) as REGISTRY:VERSION;
# INSECURE=1 allows a plain-HTTP registry. Credentials: docker login's config.
push:
	@test -n "$(REGISTRY)" || (echo "usage: make push REGISTRY=host:port/repo [INSECURE=1]"; exit 2)
	$(MAKE) images
	cd tools/image && $(GO) run . push --layout ../../$(IMAGE_LAYOUT) --ref $(REGISTRY):$(VERSION) $(if $(INSECURE),--insecure)

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

# bench-swarm: run.sh also builds bin/cdfplot, which draws each run's cdf.png.
bench-swarm: build
	./test/swarm/run.sh $(ARGS)

# cdfplot draws a swarm run's completion-time CDF (cdf.png) from its
# results.json; the harness runs $(BIN)/cdfplot when it exists. Its own module
# (tools/cdfplot), so the plotting library stays out of the product's go.mod.
cdfplot:
	cd tools/cdfplot && $(GO) build -o ../../$(BIN)/cdfplot .

# bench-sim runs the swarm simulator (docs/simulator.md): the real scheduler
# and download core in virtual time, e.g. ARGS="-n 10000 -size 500MiB -rate 1gbit".
bench-sim:
	$(GO) build -o $(BIN)/sim ./test/sim/cmd/sim
	./$(BIN)/sim $(ARGS)

clean:
	rm -rf $(BIN)
