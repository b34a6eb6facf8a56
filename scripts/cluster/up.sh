#!/usr/bin/env bash
# A local one-node Slurm cluster (munge, slurmctld, slurmd on localhost, this machine's cores) and a PostgreSQL
# server with a database for Optuna sweeps and one for an MLflow server; installs what is missing (Debian/Ubuntu, as root). Idempotent: what
# already runs is left running. Writes $OUTPUTS/cluster.env (MEDEXP_PG_URL, MEDEXP_MLFLOW_DB,
# MEDEXP_SLURM_PARTITION).
# Made for tests and trying medexp on one machine, not for a real cluster: jobs run as root, one fixed password.
set -euo pipefail
OUTPUTS=${OUTPUTS:-${MEDEXP_OUTPUT_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)/outputs}}
PARTITION=${MEDEXP_SLURM_PARTITION:-debug}
PG_USER=medexp PG_PASSWORD=medexp PG_DB=medexp_sweeps PG_MLFLOW_DB=medexp_mlflow PG_PORT=${MEDEXP_PG_PORT:-5432}
SLURM_CONF=/etc/slurm/slurm.conf
# the machine's cores: nproc counts OMP_NUM_THREADS as a limit, which tests and benchmarks set to 1
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MARK="# written by medexp scripts/cluster/up.sh"

say() { echo "cluster-up: $*"; }
die() { echo "cluster-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons), e.g. sudo make cluster-up"

missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} with this system's package manager"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# munge: the key must belong to munge; munged runs as munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf: ours is rewritten (the core count may change), a site's own is never touched
if [ -f "$SLURM_CONF" ] && ! grep -qF "$MARK" "$SLURM_CONF"; then
  die "$SLURM_CONF exists and is not medexp's: this script only sets up a throw-away local cluster"
fi
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$SLURM_CONF.tmp" <<CONF
$MARK
ClusterName=medexp
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
NodeName=localhost CPUs=$CPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$SLURM_CONF.tmp" "$SLURM_CONF" 2>/dev/null; then
  mv "$SLURM_CONF.tmp" "$SLURM_CONF"
  "$(dirname "$0")/down.sh" --slurm-only  # restart on a new config
else
  rm -f "$SLURM_CONF.tmp"
fi
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive /run/slurmctld.pid || slurmctld
alive /run/slurmd.pid || slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mix*|alloc*) break ;;
    down*|drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
case "$state" in idle*|mix*|alloc*) ;; *) die "Slurm node localhost is '${state:-unknown}': see /var/log/slurm/slurmd.log";; esac
say "slurm: partition $PARTITION, node localhost ($CPUS CPUs) $state"

# PostgreSQL: Debian's cluster, run by the postgres user (the server refuses root)
PG_VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "$PG_VERSION/main" || pg_createcluster "$PG_VERSION" main >/dev/null
pg_lsclusters -h | awk -v v="$PG_VERSION" '$1==v && $2=="main" {print $4}' | grep -q online \
  || pg_ctlcluster "$PG_VERSION" main start
psql_su() { runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }
for _ in $(seq 50); do psql_su -c "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
[ "$(psql_su -c "select 1 from pg_roles where rolname='$PG_USER'")" = 1 ] \
  || psql_su -c "CREATE USER $PG_USER WITH PASSWORD '$PG_PASSWORD' CREATEDB"
# one database for Optuna studies, one for an MLflow server: both keep an alembic_version table
for db in "$PG_DB" "$PG_MLFLOW_DB"; do
  [ "$(psql_su -c "select 1 from pg_database where datname='$db'")" = 1 ] || psql_su -c "CREATE DATABASE $db OWNER $PG_USER"
done
URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -qtA -c "select 1" >/dev/null \
  || die "PostgreSQL is up but $URL refuses the login: see /var/log/postgresql/"
say "postgresql $PG_VERSION: databases $PG_DB (Optuna), $PG_MLFLOW_DB (make server DB=...) on 127.0.0.1:$PG_PORT"

mkdir -p "$OUTPUTS"
printf 'MEDEXP_PG_URL=%s\nMEDEXP_MLFLOW_DB=%s\nMEDEXP_SLURM_PARTITION=%s\n' "$URL" "${URL%/*}/$PG_MLFLOW_DB" "$PARTITION" \
  > "$OUTPUTS/cluster.env.tmp"
mv "$OUTPUTS/cluster.env.tmp" "$OUTPUTS/cluster.env"
say "wrote $OUTPUTS/cluster.env"
