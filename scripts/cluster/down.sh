#!/usr/bin/env bash
# Stop what scripts/cluster/up.sh started: slurmd, slurmctld, munged, the PostgreSQL cluster (--slurm-only: the
# two Slurm daemons). Idempotent; keeps the installed packages, the database and outputs/cluster.env, so a later
# `make cluster-up` finds them again.
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "cluster-down: run as root, as cluster-up was" >&2; exit 1; }
stop() {  # the daemon named by its pid file, waiting for it to go so that a cluster-up right after starts afresh
  local pid; pid=$(cat "$1" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "cluster-down: pid $pid ($1) did not stop" >&2; return 1
}
stop /run/slurmd.pid; stop /run/slurmctld.pid
[ "${1:-}" = --slurm-only ] && exit 0
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h | awk '$2=="main" && $4 ~ /online/ {print $1}' | while read -r v; do pg_ctlcluster "$v" main stop; done
fi
stop /run/munge/munged.pid
echo "cluster-down: slurm, munge and postgresql stopped"
