#!/usr/bin/env bash
# System packages the runtime and its tests need (libsndfile comes inside the soundfile wheel).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s libportaudio2 >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq libportaudio2 >/dev/null
fi
