#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (the node is this host), for tests/test_slurm.py.
# Idempotent: rerunning it on a machine where the cluster is up changes nothing. Needs root.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "slurm-up: needs root (apt-get, /etc/slurm, munged); rerun with sudo" >&2
    exit 1
fi

node=$(hostname -s)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key, its folders, and the daemon running as the munge user
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pgrep -u munge -x munged >/dev/null; then
    su -s /bin/sh munge -c "munged" || { echo "slurm-up: munged did not start (see /var/log/munge/munged.log)" >&2; exit 1; }
fi

# slurm.conf: one node with the machine's CPUs and memory, as slurmd -C reports them, reached on the loopback
# address (the host name need not resolve)
spool=/var/spool/slurm
install -d -m 0755 /etc/slurm "$spool/ctld" "$spool/d" /var/log/slurm
node_line=$(slurmd -C | grep '^NodeName=')
conf=$(cat <<EOF
# written by .ci/slurm-up.sh: a one-node test cluster
ClusterName=dipclip-ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
if [ ! -f /etc/slurm/slurm.conf ] || [ "$(cat /etc/slurm/slurm.conf)" != "$conf" ]; then
    printf '%s\n' "$conf" > /etc/slurm/slurm.conf
    restart=1
else
    restart=0
fi

if [ "$restart" = 0 ] && sinfo -h -n "$node" -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm-up: $node is up already"
    exit 0
fi
if [ "$restart" = 1 ]; then
    for daemon in slurmctld slurmd; do
        if [ -f "/run/$daemon.pid" ] && kill -0 "$(cat "/run/$daemon.pid")" 2>/dev/null; then
            kill "$(cat "/run/$daemon.pid")"
            sleep 1
        fi
    done
fi
if ! { [ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }; then
    slurmctld || { echo "slurm-up: slurmctld did not start (see /var/log/slurm/slurmctld.log)" >&2; exit 1; }
fi
if ! { [ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; }; then
    slurmd || { echo "slurm-up: slurmd did not start (see /var/log/slurm/slurmd.log)" >&2; exit 1; }
fi

# wait (bounded) for the node to be idle
for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o '%T' 2>/dev/null || true)
    case "$state" in
        idle*|mixed*|allocated*) echo "slurm-up: $node is $state"; exit 0 ;;
        down*|drain*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "slurm-up: node $node not idle after 60 s (sinfo says '${state:-nothing}'); see /var/log/slurm/slurmctld.log" \
     "and /var/log/slurm/slurmd.log" >&2
exit 1
