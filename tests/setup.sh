#!/usr/bin/env bash
# Installs the real socket.io clients the tests drive (tests/js: socket.io-client 2.x, the
# Android app's protocol revision, and 4.x) and the reference servers (npm socket.io 2.x and
# 4.x, run beside camstream by tests/integration/test_conformance.py) unless they are there already, with
# Node and npm from Debian's packages when they are missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive  # apt-get never asks (CI has no terminal)
js="$(cd "$(dirname "$0")" && pwd)/js"
if ! command -v npm >/dev/null; then  # a fresh Debian machine has no Node
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq nodejs
        command -v npm >/dev/null || apt-get install -y -qq npm  # NodeSource's nodejs has it
    else
        echo "tests/setup.sh: the legacy-protocol tests need Node and npm" \
             "(as root: apt-get install -y nodejs npm)" >&2
        exit 1
    fi
fi
npm_install() {  # $1: a folder with a package.json (exactly its lockfile when it has one)
    if [ -f "$1/package-lock.json" ]; then
        npm ci --prefix "$1" --silent --no-audit --no-fund
    else
        npm install --prefix "$1" --silent --no-audit --no-fund
    fi
}
missing=""
for module in sio2 sio4 srv2 srv4; do  # the aliases of tests/js/package.json
    [ -d "$js/node_modules/$module" ] || missing="$missing $module"
done
[ -z "$missing" ] || npm_install "$js"

# The peers benchmark's Node servers (benchmarks/node_peers: socket.io 2.x and 4.x, bufferutil),
# which tests/integration/test_bench_peers.py drives with the clients above.
peers="$(cd "$(dirname "$0")/.." && pwd)/benchmarks/node_peers"
[ -d "$peers/node_modules/bufferutil" ] || npm_install "$peers"

# The display tests (tests/integration/test_display.py) open windows on a virtual screen: Xvfb, xdotool to
# find windows by name, xwininfo (x11-utils), ImageMagick's import for screenshots.
if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null \
        || ! command -v xwininfo >/dev/null || ! command -v import >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq xvfb xdotool x11-utils imagemagick
    else
        echo "tests/setup.sh: the display tests need: xvfb xdotool x11-utils imagemagick" \
             "(as root: apt-get install -y xvfb xdotool x11-utils imagemagick); skipping them" >&2
    fi
fi

# The scaling-out test (tests/integration/test_scaleout.py) puts nginx from Debian's packages in front of
# two ingest nodes; it starts its own nginx on loopback (never the system's service).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq nginx
    else
        echo "tests/setup.sh: the nginx test needs nginx (as root: apt-get install -y nginx);" \
             "skipping it" >&2
    fi
fi

# The README's examples (tests/integration/test_readme.py) pipe camstream's JSON lines into jq.
if ! command -v jq >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq jq
    else
        echo "tests/setup.sh: the README tests need jq (as root: apt-get install -y jq)" >&2
        exit 1
    fi
fi

# The browser tests (tests/integration/test_webview.py, tests/integration/test_camera.py) drive Debian's chromium in
# headless mode through Debian's chromium-driver (selenium comes from the test extras).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium chromium-driver
    else
        echo "tests/setup.sh: the browser tests need chromium and chromium-driver (as root:" \
             "apt-get install -y chromium chromium-driver); skipping them" >&2
    fi
fi

# The real-systemd test (tests/integration/test_systemd_real.py) builds a minimal Debian with debootstrap
# (cached in /var/cache/camstream-tests) and boots it with systemd-nspawn (systemd-container).
if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ] \
        || ! command -v systemd-nspawn >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq debootstrap systemd-container
    else
        echo "tests/setup.sh: the real-systemd test needs debootstrap and systemd-container" \
             "(as root: apt-get install -y debootstrap systemd-container); skipping it" >&2
    fi
fi
