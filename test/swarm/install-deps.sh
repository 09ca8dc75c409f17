#!/usr/bin/env bash
# Installs what the swarm harness needs on a fresh Debian machine: iproute2
# (ip, tc), aria2 and opentracker (the BitTorrent baseline), curl (the direct
# baseline). Idempotent: installs only what is missing. The .torrent is
# written by the harness itself, so mktorrent is not needed.
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v aria2c >/dev/null 2>&1 || need+=(aria2)
command -v opentracker >/dev/null 2>&1 || need+=(opentracker)
command -v curl >/dev/null 2>&1 || need+=(curl)

if [ ${#need[@]} -eq 0 ]; then
	echo "swarm deps present"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "missing ${need[*]}; run as root to install" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# opentracker's package would start a tracker service on install where an
# init system runs; the harness runs its own, so keep services from starting.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
# shellcheck disable=SC2046 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
echo "swarm deps installed: ${need[*]}"
