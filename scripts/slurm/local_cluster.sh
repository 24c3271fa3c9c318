#!/usr/bin/env bash
# A single-node Slurm cluster on localhost for the tests in tests/slurm/ (CPU only).
#
#   scripts/slurm/local_cluster.sh up     # install (Debian packages), configure and start it
#   scripts/slurm/local_cluster.sh down   # stop what `up` started, nothing else
#
# Daemons: munged, MariaDB (accounting storage: submitit reads job states with sacct), slurmdbd,
# slurmctld, slurmd; all on loopback. The node is this machine's real cores and memory
# (`slurmd -C`). Tuned for tests: KillWait=10 s (SIGTERM -> SIGKILL), and a requeued job starts
# again ~CRED_EXPIRE s after its requeue instead of 120 s: Slurm holds a requeued job (its BeginTime)
# until the old instance's job credential has expired, `AuthInfo=cred_expire`, 120 s by default.
# Starting it earlier by hand (`scontrol update StartTime=now`) races that credential: slurmd
# refuses the relaunch ("Job credential revoked") and the job ends FAILED. Idempotent: packages,
# daemons and state already there are reused. Needs root (Debian/Ubuntu with apt-get). State and
# logs live in $AFT_SLURM_STATE (default /var/lib/aft-slurm); the daemons this script started are
# listed in $AFT_SLURM_STATE/started, which `down` reads.
set -euo pipefail

STATE=${AFT_SLURM_STATE:-/var/lib/aft-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARKER="# written by scripts/slurm/local_cluster.sh"
CLUSTER=aftlocal
PACKAGES=(slurm-wlm slurmdbd slurm-client munge mariadb-server)
MYSQL_SOCKET=/run/mysqld/mysqld.sock
CRED_EXPIRE=10  # s: the requeue hold; long enough to launch a job step on a loaded machine

log() { echo "local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.5 s
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up in ${seconds}s (logs: $STATE/log/)"
        sleep 0.5
    done
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

STARTED_NOW=""
started() {  # started NAME PID: remember that this script started NAME (for `down`)
    echo "$1 $2" >>"$STATE/started"
    STARTED_NOW="$STARTED_NOW $1"
    log "started $1 (pid $2)"
}

install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ "${#missing[@]}" -eq 0 ] && return
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} with this system's package manager"
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
    for file in "$CONF" "$DBD_CONF"; do
        if [ -e "$file" ] && ! grep -qF "$MARKER" "$file"; then
            die "$file exists and was not written by this script: use that cluster, or move the file away"
        fi
    done
    local cpus memory
    cpus=$(nproc)
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    memory=$((memory * 9 / 10))  # leave the daemons and the test runner some memory
    mkdir -p /etc/slurm "$STATE"/{ctld,spool,log}
    cat >"$CONF" <<EOF
$MARKER: a single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=10
MinJobAge=30
InactiveLimit=0
MessageTimeout=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DBD_CONF" <<EOF
$MARKER: accounting for the test cluster.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DBD_CONF"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
    started munged "$(cat /run/munge/munged.pid)"
}

start_mariadb() {
    if mariadb-admin --socket="$MYSQL_SOCKET" ping >/dev/null 2>&1; then return; fi
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket="$MYSQL_SOCKET" \
        --log-error="$STATE/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    local pid=$!
    wait_for 60 MariaDB mariadb-admin --socket="$MYSQL_SOCKET" ping
    started mariadbd "$pid"
    mariadb --socket="$MYSQL_SOCKET" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db"
}

start_daemon() {  # start_daemon NAME PIDFILE READY-COMMAND...
    local name=$1 pidfile=$2
    shift 2
    if "$@" >/dev/null 2>&1; then return; fi
    if alive "$(cat "$pidfile" 2>/dev/null)"; then  # running but not answering yet
        wait_for 60 "$name" "$@"
        return
    fi
    case $name in
        slurmd) slurmd -N localhost ;;
        slurmctld) slurmctld -i ;;  # -i: start even if some saved state cannot be recovered
        *) "$name" ;;
    esac
    wait_for 60 "$name" "$@"
    started "$name" "$(cat "$pidfile")"
}

forget_dead() {  # keep in $STATE/started only the daemons still running (a machine may have restarted)
    local name pid
    touch "$STATE/started"
    while read -r name pid; do
        if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$name"; then echo "$name $pid"; fi
    done <"$STATE/started" >"$STATE/started.alive"
    mv "$STATE/started.alive" "$STATE/started"
}

node_ready() { sinfo -h -n localhost -o %t | grep -Eq '^(idle|mix|alloc)'; }

up() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts system daemons)"
    install_packages
    local before
    before=$(cat "$CONF" "$DBD_CONF" 2>/dev/null || true)
    write_configs
    forget_dead
    if [ -n "$before" ] && [ "$before" != "$(cat "$CONF" "$DBD_CONF")" ] && [ -s "$STATE/started" ]; then
        log "the configuration changed: restarting the daemons this script started"  # they read it at start only
        down
        forget_dead
    fi
    start_munge
    start_mariadb
    start_daemon slurmdbd "$STATE/slurmdbd.pid" sacctmgr -n list cluster
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true  # already there after the first `up`
    start_daemon slurmctld "$STATE/slurmctld.pid" scontrol ping
    if [[ " $STARTED_NOW " == *" slurmctld "* ]]; then  # a fresh start: no job left over from an earlier `up`
        scancel --quiet -p debug 2>/dev/null || true
    fi
    start_daemon slurmd "$STATE/slurmd.pid" scontrol show slurmd
    if ! node_ready; then  # e.g. DOWN after an unclean stop
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    fi
    wait_for 60 "the node" node_ready
    wait_for 60 "accounting" sh -c "sacct -n -a -X -S now-1minutes >/dev/null"
    log "up: $(sinfo -h -o '%P %D nodes %c CPUs %m MB %t')"
}

down() {
    [ -f "$STATE/started" ] || { log "nothing started by this script"; return; }
    if grep -q '^slurmctld ' "$STATE/started"; then
        scancel --full --quiet -p debug 2>/dev/null || true  # the jobs of this test cluster
    fi
    local name pid
    tac "$STATE/started" | while read -r name pid; do  # reverse order of start
        if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$name"; then
            kill "$pid"
            for _ in $(seq 60); do alive "$pid" || break; sleep 0.5; done
            alive "$pid" && kill -9 "$pid"
            log "stopped $name (pid $pid)"
        fi
    done
    rm -f "$STATE/started"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
