#!/bin/sh
# Rebuild the web console's vendored front-end files from npm (pinned in package-lock.json).
# The results are committed under service/console/static/vendor, so `pip install` needs no npm
# and nothing is fetched at run time.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
out=../service/console/static/vendor
mkdir -p "$out"
cp node_modules/@xterm/xterm/lib/xterm.js "$out/xterm.js"
cp node_modules/@xterm/xterm/css/xterm.css "$out/xterm.css"
cp node_modules/@xterm/xterm/LICENSE "$out/xterm.LICENSE"
echo "vendored @xterm/xterm $(node -p "require('./node_modules/@xterm/xterm/package.json').version") into $out"
