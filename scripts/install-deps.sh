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

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: need root to apt-get install ${need[*]}" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	echo "install-deps: installed ${need[*]}"
fi

# versitygw: the real S3 server the S3 and recursive-download tests start
# (a Go program: go install into $(go env GOPATH)/bin, where the tests look).
VERSITYGW_VERSION=v1.8.0
gobin="$(go env GOPATH | cut -d: -f1)/bin"
if ! command -v versitygw >/dev/null && [ ! -x "$gobin/versitygw" ]; then
	GOBIN="$gobin" GOFLAGS= go install "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}"
	echo "install-deps: installed versitygw ${VERSITYGW_VERSION} into $gobin"
fi
