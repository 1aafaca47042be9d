#!/usr/bin/env bash
# The thesis's profiling experiment (§5.3, Tables 5.2/5.3, Figures 5.5-5.8), reproduced:
# Agent99 (`smart profile`) measures the real distributor streaming a 400 kbit/s, 2-hour
# video (20 % cached: 72 MB, fetched at start: the thesis's static cache) to 1 and then 10
# viewers, at 1 s intervals, with network percentages of the thesis's 80 Mbit/s external
# NIC. Writes the class profile the demo and
# the example configs use (config/profiles/distributor.json), the plots and the tables
# (docs/profiling/).
#
#   scripts/profile-distributor.sh [SECONDS_PER_COUNT]   (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}
cargo build --release -q -p smart -p smart-vod
bin=target/release
port=$((20000 + RANDOM % 20000))
origin_port=$((port + 1))
out=docs/profiling
mkdir -p "$out" config/profiles
"$bin/vod" origin --listen "127.0.0.1:$origin_port" --synthetic zorro:400:7200 &
origin=$!
trap 'kill $origin 2>/dev/null || true' EXIT
sleep 0.5
"$bin/smart" profile \
  --clients 1,10 --duration "${secs}s" --interval 1s \
  --load "$bin/vod viewers --url http://127.0.0.1:$port/zorro --clients {clients} --duration-s $((secs + 30)) --ramp-ms 500 --json > /dev/null" \
  --service distributor --nic-bps 80000000 \
  --video-bitrate-bps 400000 --video-duration 2h --video-window-fraction 0.2 \
  --out config/profiles/distributor.json --plot "$out" \
  -- "$bin/vod" distributor --prefill --listen "127.0.0.1:$port" --origin "http://127.0.0.1:$origin_port" \
  | tee "$out/tables.txt"
