#!/usr/bin/env bash
# What `kws-train synth` needs on Debian bookworm: the TTS engines (RHVoice from
# bookworm-backports, non-free), sox, opus-tools, fortunes-ru, and apt-get download
# for the packages of real recordings (fetched at generation time, never committed).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
src=/etc/apt/sources.list.d/kws-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # the mirror of the existing bookworm entry (deb822 "URIs:" lines, else one-line "deb" entries)
    mirror=$(grep -hE "^URIs:" /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security \
             | head -n1 || true)
    if [ -z "$mirror" ]; then
        mirror=$(grep -hE "^deb " /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    cat > "$src" <<SRC
Types: deb
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
apt-get install -y -qq espeak-ng festival festvox-ru sox libsox-fmt-all opus-tools fortunes-ru ffmpeg >/dev/null
apt-get install -y -qq -t bookworm-backports rhvoice rhvoice-russian >/dev/null
