#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine. Idempotent:
# it installs only what is missing. Needs root for apt-get.
set -euo pipefail

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v ip >/dev/null || need+=(iproute2)
command -v tc >/dev/null || need+=(iproute2)
command -v aria2c >/dev/null || need+=(aria2)
command -v opentracker >/dev/null || [ -x /usr/bin/opentracker ] || need+=(opentracker)
command -v curl >/dev/null || need+=(curl)
# Real parts the registry-mirror and manager tests start themselves.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v containerd >/dev/null || need+=(containerd)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# nginx serves the directory listings of the recursive-download tests.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# The image test runs the built image with `ctr run` (runc); configure-runtime
# is checked against real Podman and Docker's own config validation.
command -v runc >/dev/null || need+=(runc)
command -v podman >/dev/null || need+=(podman)
command -v dockerd >/dev/null || need+=(docker.io)
command -v systemd-analyze >/dev/null || need+=(systemd)  # checks deploy/systemd units
# Headless Chromium drives the web console's tests (test/console).
command -v chromium >/dev/null || need+=(chromium)
# A real Prometheus (and promtool) for the dashboard and alert-rule test; a
# real MariaDB for the manager's third database.
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: need root to apt-get install ${need[*]}" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# Other jobs on the machine may hold dpkg's lock for a while.
	apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
	echo "install-deps: installed ${need[*]}"
fi

# staticcheck (scripts/test.sh runs it): pinned to a release that supports
# the Go version of go.mod. Installed into GOBIN (default $(go env GOPATH)/bin).
STATICCHECK_VERSION=v0.8.2
gobin=$(go env GOBIN)
[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
if ! "$gobin/staticcheck" -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
	go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
	echo "install-deps: installed staticcheck $STATICCHECK_VERSION"
fi

# helm (v4, from the Go module proxy) for the chart tests.
if ! go version -m "$gobin/helm" 2>/dev/null | grep -qE '^\s*mod\s+helm\.sh/helm/v4\s+v4\.3\.2'; then
	go install helm.sh/helm/v4/cmd/helm@v4.3.2
	echo "install-deps: installed helm v4.3.2 into $gobin"
fi

# versitygw: the real S3 server the S3 and recursive-download tests start
# (a Go program: go install into $(go env GOPATH)/bin, where the tests look).
VERSITYGW_VERSION=v1.8.0
gopathbin="$(go env GOPATH | cut -d: -f1)/bin"
if ! command -v versitygw >/dev/null && [ ! -x "$gopathbin/versitygw" ]; then
	GOBIN="$gopathbin" GOFLAGS= go install "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}"
	echo "install-deps: installed versitygw ${VERSITYGW_VERSION} into $gopathbin"
fi
