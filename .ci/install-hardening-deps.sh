#!/usr/bin/env bash
# What the security tests need: tcpdump, to check on loopback that CURVE traffic is unreadable.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v tcpdump >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq tcpdump >/dev/null
fi
