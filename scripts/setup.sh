#!/usr/bin/env bash
# Installs what SMART's tests and demo need on a fresh Debian machine (idempotent).
# - nftables, iproute2: partitions and loss in the network-namespace suite
# - ffmpeg: the real-client tests decode streams with it; `vod make-video --real` encodes
#   H.264 + AAC test videos with it
# - nginx-light: the `vod bench streams` comparison
# - chromium, chromium-driver: the browser test plays the HLS player page headless
# - nodejs, npm: `npm ci` in vod/ui installs hls.js (served with the player page) and
#   playwright-core (drives Chromium for the browser tests) into vod/ui/node_modules, and in
#   ui/ uPlot (the dashboard's chart, embedded in the smart binary by build.rs) into
#   ui/node_modules (neither committed; no browser download: Debian's chromium is used)
# - prometheus: its promtool checks the nodes' /metrics in the tests
# - keepalived: the front-end pair's shared address (VRRP) in the namespace suite and deploy/
# - cargo-nextest, cargo-deny: the test runner and the supply-chain checks of .ci/run
# Needs root (or sudo) for apt; skips packages that are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v keepalived >/dev/null 2>&1 || need+=(keepalived)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# The lock file pins hls.js and playwright-core; `npm ci` is skipped when node_modules was
# installed from this very lock (the copy left in node_modules/.smart-lock says so).
for ui in vod/ui ui; do
  if ! cmp -s "$ui/package-lock.json" "$ui/node_modules/.smart-lock" 2>/dev/null; then
    echo "setup: npm ci in $ui"
    (cd "$ui" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error \
      && cp package-lock.json node_modules/.smart-lock)
  fi
done
# The Debian package starts a Prometheus server where systemd runs; the tests only need
# promtool, so a server this script caused to start is stopped (never one that was there).
if [[ " ${need[*]:-} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
if ! cargo deny --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deny (supply-chain checks, deny.toml)"
  cargo install --locked cargo-deny
fi
# The loopback example's keys: made here, never committed (smart keys keeps existing ones).
if [ ! -f config/loopback-3/nodes.pub ]; then
  echo "setup: making the loopback-3 example keys (smart keys)"
  cargo run --quiet --bin smart -- keys --dir config/loopback-3 --nodes 1,2,3
fi
echo "setup: ok (promtool $(command -v promtool), nft $(command -v nft), ffmpeg $(command -v ffmpeg), nginx $(command -v nginx), chromium $(command -v chromium), node $(command -v node))"
