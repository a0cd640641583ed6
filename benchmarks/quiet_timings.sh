#!/usr/bin/env bash
# Quiet-machine timings: pause the long benchmarks (SIGSTOP), time start-up, latency repeatability, the demo and
# scale-out, then resume them (SIGCONT). Run from anywhere: bash benchmarks/quiet_timings.sh > timing.log 2>&1
cd "$(dirname "$0")/.."
PIDS=$(pgrep -f "benchmarks/(masks_long|structured|tv_coverage).py" | tr '\n' ' ')
echo "pausing: $PIDS"; kill -STOP $PIDS 2>/dev/null
trap 'kill -CONT $PIDS 2>/dev/null; echo resumed' EXIT
sleep 3; uptime
export PYTHONPATH=src OMP_NUM_THREADS=1
echo "== startup"
for c in "--help" "--version" "models" "datasets"; do
  for i in 1 2 3 4 5; do /usr/bin/time -f "%e" .venv/bin/netsift $c > /dev/null 2>> /tmp/startup_$c.txt; done
  echo "netsift $c: $(sort -n /tmp/startup_$c.txt | tail -5 | sed -n 3p) s median of 5"
done
echo "== latency_repeat"; timeout 400 .venv/bin/python benchmarks/latency_repeat.py 2>&1 | tail -8
echo "== demo"; ( time .venv/bin/netsift demo --quiet ) 2>&1 | tail -16
echo "== scale_out"; timeout 900 .venv/bin/python benchmarks/scale_out.py --note "quiet 2-core machine: the long benchmarks were paused (SIGSTOP) during this run" 2>&1 | tail -15
uptime
