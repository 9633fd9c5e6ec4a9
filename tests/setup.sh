#!/usr/bin/env bash
# Installs the real socket.io clients the tests drive (tests/js: socket.io-client 2.x, the
# Android app's protocol revision, and 4.x) unless they are there already. Needs Node and npm.
set -euo pipefail
js="$(cd "$(dirname "$0")" && pwd)/js"
if [ ! -d "$js/node_modules" ]; then
    if [ -f "$js/package-lock.json" ]; then
        npm ci --prefix "$js" --silent --no-audit --no-fund
    else
        npm install --prefix "$js" --silent --no-audit --no-fund
    fi
fi
