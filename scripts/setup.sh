#!/usr/bin/env bash
# Installs what SMART's tests and demo need on a fresh Debian machine (idempotent).
# - nftables, iproute2: partitions and loss in the network-namespace suite
# - ffmpeg: the real-client tests decode streams with it
# - nginx-light: the `vod bench streams` comparison
# - cargo-nextest, cargo-deny: the test runner and the supply-chain checks of .ci/run
# Needs root (or sudo) for apt; skips packages that are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
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
if ! cargo deny --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deny (supply-chain checks, deny.toml)"
  cargo install --locked cargo-deny
fi
# The loopback example's keys: made here, never committed (smart keys keeps existing ones).
if [ ! -f config/loopback-3/nodes.pub ]; then
  echo "setup: making the loopback-3 example keys (smart keys)"
  cargo run --quiet --bin smart -- keys --dir config/loopback-3 --nodes 1,2,3
fi
echo "setup: ok (nft $(command -v nft), ffmpeg $(command -v ffmpeg), nginx $(command -v nginx))"
