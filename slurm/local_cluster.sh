#!/usr/bin/env bash
# A real SLURM cluster on this one machine, for tests and demos: munge, mariadb (private
# socket and port), slurmdbd (so sacct works, which submitit polls), slurmctld and N slurmd
# nodes with fake GPUs (gres on character devices).
#
#   slurm/local_cluster.sh start     # idempotent; prints `export SLURM_CONF=...`
#   slurm/local_cluster.sh status    # exit 0 only if every daemon runs
#   slurm/local_cluster.sh stop      # cancels jobs, stops the daemons by their pid files
#
# All config, state, logs and pid files live under $BRAINMRI_SLURM_DIR (default
# /tmp/brainmri-slurm); `start` also writes $BRAINMRI_SLURM_DIR/env.sh to source. Needs root
# and the packages from slurm/install_local_cluster.sh; installs nothing itself.
set -euo pipefail

STATE=${BRAINMRI_SLURM_DIR:-/tmp/brainmri-slurm}
NODES=${BRAINMRI_SLURM_NODES:-2}
CPUS=${BRAINMRI_SLURM_CPUS_PER_NODE:-2}
GPUS=${BRAINMRI_SLURM_GPUS_PER_NODE:-2}
PORT_BASE=${BRAINMRI_SLURM_PORT_BASE:-16800}  # away from the defaults a system cluster uses
CLUSTER=brainmri

ETC=$STATE/etc RUN=$STATE/run LOG=$STATE/log MUNGE=$STATE/munge
CONF=$ETC/slurm.conf
MUNGE_SOCKET=$MUNGE/munge.socket.2
DB_SOCKET=$STATE/mysql-run/mysqld.sock
DB_PORT=$((PORT_BASE + 6)) CTLD_PORT=$((PORT_BASE + 17)) DBD_PORT=$((PORT_BASE + 19))
export SLURM_CONF=$CONF

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "node$i"; done; }

die() { echo "local_cluster: $*" >&2; exit 1; }

# pid_of NAME PIDFILE: the pid if that process runs and is NAME (pids get reused).
pid_of() {
    local pid
    [[ -s $2 ]] || return 1
    pid=$(<"$2")
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] && echo "$pid"
}

# wait_until SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_until() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out waiting for $what (logs in $LOG)"
        sleep 0.5
    done
}

write_configs() {
    local memory_mb node i
    # RealMemory above the physical memory drains a node; leave headroom for the daemons.
    memory_mb=$(awk -v n="$NODES" '/MemTotal/ {print int($2 / 1024 * 0.8 / n)}' /proc/meminfo)
    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool" "$STATE/dev"
    for ((i = 0; i < GPUS; i++)); do
        [[ -c $STATE/dev/gpu$i ]] || mknod "$STATE/dev/gpu$i" c 1 3  # same device numbers as /dev/null
    done
    {
        cat <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10,socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# for slurmdbd connections this "password" is the munge socket to use
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
KillWait=10
MailProg=/bin/true
ReturnToService=2
InactiveLimit=0
MinJobAge=300
EOF
        for node in $(node_names); do
            i=${node#node}
            echo "NodeName=$node NodeAddr=127.0.0.1 Port=$((PORT_BASE + 29 + i)) CPUs=$CPUS" \
                "RealMemory=$memory_mb Gres=gpu:$GPUS State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF"
    for node in $(node_names); do
        echo "NodeName=$node Name=gpu File=$STATE/dev/gpu[0-$((GPUS - 1))]"
    done >"$ETC/gres.conf"
    echo "CgroupPlugin=autodetect" >"$ETC/cgroup.conf"

    [[ -s $ETC/db.pass ]] || (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/db.pass")
    (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$ETC/db.pass")
StorageLoc=${CLUSTER}_acct
EOF
    )
}

add_hosts() {
    local node
    for node in $(node_names); do
        getent hosts "$node" >/dev/null || echo "127.0.0.1 $node" >>/etc/hosts
    done
}

start_munge() {
    pid_of munged "$MUNGE/munged.pid" >/dev/null && return
    mkdir -p "$MUNGE"
    if [[ ! -s $MUNGE/munge.key ]]; then
        dd if=/dev/urandom of="$MUNGE/munge.key" bs=1 count=1024 status=none
    fi
    chown -R munge:munge "$MUNGE"
    chmod 755 "$MUNGE"  # clients of other users must reach the socket
    chmod 400 "$MUNGE/munge.key"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE/munge.key" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
    wait_until 10 munged munge --socket="$MUNGE_SOCKET" -n
}

mysql_root() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_mariadb() {
    if ! pid_of mariadbd "$STATE/mysql-run/mysqld.pid" >/dev/null; then
        mkdir -p "$STATE/mysql" "$STATE/mysql-run"
        touch "$LOG/mariadb.log"
        chown mysql:mysql "$STATE/mysql" "$STATE/mysql-run" "$LOG/mariadb.log"
        if [[ ! -d $STATE/mysql/mysql ]]; then
            mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=mysql \
                --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed, see $LOG/mariadb-install.log"
        fi
        setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --socket="$DB_SOCKET" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --skip-log-bin \
            --pid-file="$STATE/mysql-run/mysqld.pid" --log-error="$LOG/mariadb.log" </dev/null >/dev/null 2>&1 &
    fi
    wait_until 60 mariadb mysql_root -e "SELECT 1"
    local pass
    pass=$(<"$ETC/db.pass")
    mysql_root --batch <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON \`${CLUSTER}_acct\`.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurmdbd() {
    pid_of slurmdbd "$RUN/slurmdbd.pid" >/dev/null || slurmdbd
    wait_until 60 slurmdbd sacctmgr -n show cluster
    # slurmctld registers with slurmdbd only if the cluster exists there already
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    pid_of slurmctld "$RUN/slurmctld.pid" >/dev/null || slurmctld -f "$CONF"
    wait_until 30 slurmctld scontrol ping
}

start_slurmd() {
    local node
    for node in $(node_names); do
        mkdir -p "$STATE/spool/$node"
        pid_of slurmd "$RUN/slurmd-$node.pid" >/dev/null || slurmd -f "$CONF" -N "$node"
    done
}

nodes_ready() {
    local states
    states=$(sinfo -h -N -o '%T' | sort -u)
    [[ -n $states ]] && ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$states"
}

wait_nodes() {
    local deadline=$((SECONDS + 60)) node
    until nodes_ready; do
        # a node left down or drained by an earlier run must be resumed by hand
        for node in $(sinfo -h -N -t down,drain,fail -o '%N'); do
            scontrol update nodename="$node" state=resume 2>/dev/null || true
        done
        ((SECONDS < deadline)) || { sinfo -N >&2; die "nodes not idle after 60 s (logs in $LOG)"; }
        sleep 0.5
    done
}

cmd_start() {
    [[ $(id -u) -eq 0 ]] || die "start needs root"
    command -v slurmctld >/dev/null || die "slurm is not installed: run slurm/install_local_cluster.sh"
    write_configs
    add_hosts
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_nodes
    printf 'export SLURM_CONF=%q\n' "$CONF" >"$STATE/env.sh"
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

# stop_pid NAME PIDFILE: TERM, then KILL after 20 s.
stop_pid() {
    local pid i
    pid=$(pid_of "$1" "$2") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$2"
}

cmd_stop() {
    local node jobs i
    if pid_of slurmctld "$RUN/slurmctld.pid" >/dev/null; then
        jobs=$(squeue -h -o '%A' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086  # job ids, one word each
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 30 && $(squeue -h -o '%A' 2>/dev/null | wc -l) > 0; i++)); do sleep 0.5; done
        fi
    fi
    for node in $(node_names); do stop_pid slurmd "$RUN/slurmd-$node.pid"; done
    stop_pid slurmctld "$RUN/slurmctld.pid"
    stop_pid slurmdbd "$RUN/slurmdbd.pid"
    stop_pid mariadbd "$STATE/mysql-run/mysqld.pid"
    stop_pid munged "$MUNGE/munged.pid"
    echo "local cluster stopped"
}

cmd_status() {
    local ok=0 entry name file node
    for entry in "munged:$MUNGE/munged.pid" "mariadbd:$STATE/mysql-run/mysqld.pid" \
        "slurmdbd:$RUN/slurmdbd.pid" "slurmctld:$RUN/slurmctld.pid"; do
        name=${entry%%:*} file=${entry#*:}
        if pid_of "$name" "$file" >/dev/null; then echo "$name: running"; else echo "$name: stopped"; ok=1; fi
    done
    for node in $(node_names); do
        if pid_of slurmd "$RUN/slurmd-$node.pid" >/dev/null; then
            echo "slurmd $node: running"
        else
            echo "slurmd $node: stopped"
            ok=1
        fi
    done
    [[ $ok -eq 0 ]] && sinfo -N -o '%N %P %T %c %G' 2>/dev/null
    echo "SLURM_CONF=$CONF"
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
