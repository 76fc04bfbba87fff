#!/usr/bin/env bash
# What the live-daemon tests need: PortAudio, PulseAudio with its ALSA plugin, systemd tooling.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils systemd >/dev/null
