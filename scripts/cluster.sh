#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, reached over SSH, as an AiiDA computer `slurm-ssh`.
#
#   bash scripts/cluster.sh                      # install + start services, configure profile $MLPES_PROFILE
#   bash scripts/cluster.sh --profile NAME       # the same for profile NAME (of $AIIDA_PATH)
#   bash scripts/cluster.sh --services-only      # install + start munge, mariadb, slurmdbd, slurmctld, slurmd, sshd
#   bash scripts/cluster.sh --aiida-only --profile NAME   # only the computer and codes (services already up)
#   bash scripts/cluster.sh --status             # what runs, sinfo, squeue
#   bash scripts/cluster.sh --stop               # stop the services this script starts
#
# Runs as root (apt-get, system services). Idempotent: services already running are left alone, an existing
# computer or code is reused. No network except apt. Everything it writes outside the system configuration
# (/etc/slurm, /etc/munge, /etc/ssh) lives under $MLPES_CLUSTER_DIR (default /tmp/aiida-mlpes-cluster):
# SLURM logs and state, the accounting database, and the AiiDA work directory of the computer.
#
# The node gets the machine's real CPU count and memory (`slurmd -C`); one partition `debug` (default,
# MaxTime $MLPES_SLURM_MAXTIME minutes, partition limits enforced at submission, so an over-limit walltime is
# rejected by sbatch instead of pending forever); accounting through slurmdbd + MariaDB, so `sacct` lists
# every job and AiiDA can tell a walltime kill (State TIMEOUT) from other failures.
#
# Environment: VENV (default ./.venv), AIIDA_PATH (default ./.aiida), MLPES_PROFILE (default mlpes),
# MLPES_CLUSTER_DIR, MLPES_SSH_PORT (default 22), MLPES_SLURM_MAXTIME (minutes, default 60),
# MLPES_COMPUTER (default slurm-ssh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export AIIDA_PATH="${AIIDA_PATH:-$ROOT/.aiida}"
PROFILE="${MLPES_PROFILE:-mlpes}"
BASE="${MLPES_CLUSTER_DIR:-/tmp/aiida-mlpes-cluster}"
SSH_PORT="${MLPES_SSH_PORT:-22}"
MAXTIME="${MLPES_SLURM_MAXTIME:-60}"
COMPUTER="${MLPES_COMPUTER:-slurm-ssh}"
CLUSTER_NAME=mlpes
PARTITION=debug
KEY="$HOME/.ssh/aiida_mlpes_ed25519"
#: the `Host` entry of ~/.ssh/config that the computer's transport (core.ssh_async) connects to
SSH_ALIAS=aiida-mlpes-slurm

DO_SERVICES=1
DO_AIIDA=1
ACTION=up
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift ;;
    --services-only) DO_AIIDA=0 ;;
    --aiida-only) DO_SERVICES=0 ;;
    --stop) ACTION=stop ;;
    --status) ACTION=status ;;
    -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n==> %s\n' "$*"; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
running() { pgrep -x "$1" >/dev/null 2>&1; }

stop_services() {
  # stop in reverse order of dependence; each by the PID it recorded (or the one pgrep finds for its exact name)
  for name in slurmd slurmctld slurmdbd sshd munged mariadbd; do
    pids=""
    case "$name" in
      sshd) [ -f "$BASE/sshd.pid" ] && pids="$(cat "$BASE/sshd.pid")" ;;
      mariadbd) [ -f "$BASE/mysql/mariadb.pid" ] && pids="$(cat "$BASE/mysql/mariadb.pid")" ;;
      *) pids="$(pgrep -x "$name" || true)" ;;
    esac
    for pid in $pids; do
      kill "$pid" 2>/dev/null && echo "stopped $name ($pid)" || true
    done
  done
  for _ in $(seq 1 20); do
    running slurmd || running slurmctld || running slurmdbd || running mariadbd || break
    sleep 0.5
  done
}

status() {
  for name in munged mariadbd slurmdbd slurmctld slurmd sshd; do
    if running "$name"; then echo "$name: running"; else echo "$name: stopped"; fi
  done
  if running slurmctld; then sinfo; squeue; fi
}

case "$ACTION" in
  stop) stop_services; exit 0 ;;
  status) status; exit 0 ;;
esac

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts system services)"

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  running munged || runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
  echo "munged: running"
}

start_mariadb() {
  local datadir="$BASE/mysql"
  install -d -o mysql -g mysql "$datadir" /run/mysqld
  if [ ! -d "$datadir/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=socket \
      --skip-test-db >"$BASE/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $BASE/mariadb-install.log"
  fi
  if ! running mariadbd; then
    runuser -u mysql -- mariadbd --datadir="$datadir" --socket=/run/mysqld/mysqld.sock \
      --pid-file="$datadir/mariadb.pid" --bind-address=127.0.0.1 --port=3306 --skip-name-resolve \
      --innodb-buffer-pool-size=64M --log-error="$datadir/mariadb.log" </dev/null >/dev/null 2>&1 &
    disown
  fi
  for _ in $(seq 1 60); do
    mariadb -uroot -e "select 1" >/dev/null 2>&1 && break
    sleep 0.5
  done
  mariadb -uroot -e "select 1" >/dev/null 2>&1 || die "mariadb did not start: $datadir/mariadb.log"
  mariadb -uroot <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
  echo "mariadbd: running (data in $datadir)"
}

write_slurm_config() {
  local node cpus mem
  node="$(hostname -s)"
  cpus="$(nproc --all)"
  mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
  # keep some memory for the OS and the daemons
  mem=$(( mem > 2048 ? mem - 1024 : mem ))
  install -d -o slurm -g slurm "$BASE/slurm" "$BASE/slurm/state" "$BASE/slurm/spool" /run/slurm
  install -d /etc/slurm
  cat > /etc/slurm/slurmdbd.conf <<EOF
# written by aiida-mlpes scripts/cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
LogFile=$BASE/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 0600 /etc/slurm/slurmdbd.conf
  cat > /etc/slurm/slurm.conf <<EOF
# written by aiida-mlpes scripts/cluster.sh: one node, the real CPUs and memory of this machine
ClusterName=$CLUSTER_NAME
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$BASE/slurm/state
SlurmdSpoolDir=$BASE/slurm/spool
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$BASE/slurm/slurmctld.log
SlurmdLogFile=$BASE/slurm/slurmd.log
# no cgroups in containers: track processes by their parent, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# a job over its partition's limits (walltime, nodes) is rejected by sbatch, not left pending
EnforcePartLimits=ALL
# accounting: sacct shows every job (and its State: COMPLETED, TIMEOUT, CANCELLED ...)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# short timers so that a killed job or a restarted daemon is noticed within seconds
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=5
MinJobAge=60
ReturnToService=2
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=$MAXTIME State=UP
EOF
  echo "slurm.conf: node $node, $cpus CPUs, $mem MB, partition $PARTITION (MaxTime $MAXTIME min)"
}

start_slurm() {
  if ! running slurmdbd; then
    slurmdbd
  fi
  for _ in $(seq 1 40); do
    sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.5
  done
  sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd did not start: $BASE/slurm/slurmdbd.log"
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  fi
  if running slurmctld; then
    scontrol reconfigure >/dev/null 2>&1 || true
  else
    slurmctld
  fi
  running slurmd || slurmd
  for _ in $(seq 1 60); do
    state="$(sinfo -h -N -o %t 2>/dev/null | head -1)"
    case "$state" in idle*|mix*|alloc*) break ;; esac
    sleep 0.5
  done
  case "$state" in
    idle*|mix*|alloc*) ;;
    *) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
  esac
  sinfo
}

start_sshd() {
  ssh-keygen -A >/dev/null
  install -d -m 0755 /run/sshd
  install -d -m 0700 "$HOME/.ssh"
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -C "aiida-mlpes cluster.sh" -f "$KEY"
  touch "$HOME/.ssh/authorized_keys"
  chmod 0600 "$HOME/.ssh/authorized_keys"
  grep -qF "$(cat "$KEY.pub")" "$HOME/.ssh/authorized_keys" || cat "$KEY.pub" >> "$HOME/.ssh/authorized_keys"
  if [ ! -f "$BASE/sshd.pid" ] || ! kill -0 "$(cat "$BASE/sshd.pid")" 2>/dev/null; then
    /usr/sbin/sshd -p "$SSH_PORT" -o ListenAddress=127.0.0.1 -o PermitRootLogin=prohibit-password \
      -o PasswordAuthentication=no -o PidFile="$BASE/sshd.pid" -o MaxStartups=50:30:100 -o MaxSessions=50
    sleep 0.5
  fi
  touch "$HOME/.ssh/known_hosts"
  if ! ssh-keygen -F "[localhost]:$SSH_PORT" >/dev/null && ! ssh-keygen -F localhost >/dev/null; then
    ssh-keyscan -p "$SSH_PORT" -t ed25519 localhost 2>/dev/null >> "$HOME/.ssh/known_hosts"
  fi
  touch "$HOME/.ssh/config"
  chmod 0600 "$HOME/.ssh/config"
  if ! grep -qx "Host $SSH_ALIAS" "$HOME/.ssh/config"; then
    printf '\n# aiida-mlpes scripts/cluster.sh: the local SLURM cluster\nHost %s\n  HostName localhost\n  Port %s\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  BatchMode yes\n' \
      "$SSH_ALIAS" "$SSH_PORT" "$(id -un)" "$KEY" >> "$HOME/.ssh/config"
  fi
  ssh "$SSH_ALIAS" true || die "ssh $SSH_ALIAS (root@localhost:$SSH_PORT with $KEY) failed"
  echo "sshd: localhost:$SSH_PORT, key $KEY"
}

configure_aiida() {
  [ -x "$VENV/bin/verdi" ] || die "no AiiDA in $VENV: run scripts/setup.sh first"
  local verdi=("$VENV/bin/verdi" -p "$PROFILE")
  local workdir="$BASE/work/{username}"
  install -d "$BASE/work"
  if ! "${verdi[@]}" computer show "$COMPUTER" >/dev/null 2>&1; then
    "${verdi[@]}" computer setup --non-interactive --label "$COMPUTER" --hostname localhost \
      --description "one-node SLURM on this machine, over SSH (scripts/cluster.sh)" \
      --transport core.ssh_async --scheduler core.slurm --work-dir "$workdir" --shebang '#!/bin/bash' \
      --mpirun-command "srun -n {tot_num_mpiprocs}" --mpiprocs-per-machine "$(nproc --all)" \
      --not-use-double-quotes
  fi
  # AiiDA asks the scheduler at most every 2 s (squeue over one SSH connection); the default is 10 s
  "${verdi[@]}" computer set-option "$COMPUTER" minimum_job_poll_interval 2 >/dev/null 2>&1 || \
    "$VENV/bin/python" - "$PROFILE" "$COMPUTER" <<'PY'
import sys
from aiida import load_profile, orm
load_profile(sys.argv[1])
orm.load_computer(sys.argv[2]).set_minimum_job_poll_interval(2.0)
PY
  "${verdi[@]}" computer configure core.ssh_async "$COMPUTER" --non-interactive --host "$SSH_ALIAS" \
    --max-io-allowed 8 --backend asyncssh --safe-interval 0.5 >/dev/null
  # core.ssh_async connects on the engine's event loop, which needs the broker: with the ZeroMQ broker that
  # runs with the daemon, so `verdi computer test` only works while the daemon runs
  if "${verdi[@]}" daemon status >/dev/null 2>&1; then
    "${verdi[@]}" computer test "$COMPUTER" | tail -3
  else
    ssh "$SSH_ALIAS" squeue --version >/dev/null || die "ssh $SSH_ALIAS squeue failed"
    echo "ssh $SSH_ALIAS squeue: ok (start the daemon and run 'verdi computer test $COMPUTER' for AiiDA's own test)"
  fi
  local xtb runner
  xtb="$(command -v xtb || true)"
  runner="$VENV/bin/aiida-mlpes-run"
  if [ -n "$xtb" ] && ! "${verdi[@]}" code show "xtb@$COMPUTER" >/dev/null 2>&1; then
    "${verdi[@]}" code create core.code.installed --non-interactive --label xtb --computer "$COMPUTER" \
      --filepath-executable "$xtb" --default-calc-job-plugin mlpes.xtb \
      --prepend-text 'export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}' \
      --description "GFN-xTB (Debian package) on the SLURM computer"
  fi
  if ! "${verdi[@]}" code show "aiida-mlpes-run@$COMPUTER" >/dev/null 2>&1; then
    "${verdi[@]}" code create core.code.installed --non-interactive --label aiida-mlpes-run \
      --computer "$COMPUTER" --filepath-executable "$runner" \
      --description "aiida-mlpes task runner on the SLURM computer"
  fi
  "${verdi[@]}" code list --computer "$COMPUTER"
}

if [ "$DO_SERVICES" -eq 1 ]; then
  install -d "$BASE"
  install_packages
  step "munge"; start_munge
  step "MariaDB (SLURM accounting)"; start_mariadb
  step "SLURM"; write_slurm_config; start_slurm
  step "sshd on localhost"; start_sshd
fi
if [ "$DO_AIIDA" -eq 1 ]; then
  step "AiiDA computer $COMPUTER and codes in profile $PROFILE (AIIDA_PATH=$AIIDA_PATH)"
  configure_aiida
fi
