#!/usr/bin/env bash
# What `kws-train synth` needs on Debian bookworm: the TTS engines (RHVoice from
# bookworm-backports, non-free), sox, opus-tools, fortunes-ru, and apt-get download
# for the packages of real recordings (fetched at generation time, never committed).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
src=/etc/apt/sources.list.d/kws-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # backports from the mirror this machine already uses for bookworm (deb822 "URIs:" lines,
    # else one-line "deb" entries); no mirror of our own choosing
    mirror=$(grep -hE "^URIs:" /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security \
             | head -n1 || true)
    if [ -z "$mirror" ]; then
        mirror=$(grep -hE "^deb .* bookworm( |$)" /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                 | awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    if [ -z "$mirror" ]; then
        echo "install-synth-deps.sh: no bookworm entry in /etc/apt/sources.list or /etc/apt/sources.list.d/;" \
             "add one (RHVoice comes from bookworm-backports)" >&2
        exit 1
    fi
    cat > "$src" <<SRC
Types: deb
URIs: ${mirror}
Suites: bookworm-backports
Components: main contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
apt-get install -y -qq espeak-ng festival festvox-ru sox libsox-fmt-all opus-tools fortunes-ru ffmpeg >/dev/null
apt-get install -y -qq -t bookworm-backports rhvoice rhvoice-russian >/dev/null
