#!/usr/bin/env bash
# What the live-daemon tests need: PortAudio, PulseAudio with its ALSA plugin, systemd tooling;
# and the RTP tests: libopus, and GStreamer as a second real RTP sender (ffmpeg comes with the synth deps).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils systemd libopus0 \
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good >/dev/null
