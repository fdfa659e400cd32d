#!/usr/bin/env bash
# A Slurm cluster of two nodes on this one machine, for tests/orchestrator/test_slurm.py:
# munged, slurmctld and two slurmd (n1, n2) from Debian's packages, state under $1
# (default /tmp/orchestrator-slurm). Run as root; then, in the shell that runs the tests:
#
#   apt-get install -y --no-install-recommends slurm-wlm munge   # about 15 s
#   tests/slurm/start-cluster.sh /tmp/orchestrator-slurm
#   export SLURM_CONF=/tmp/orchestrator-slurm/slurm.conf ORCHESTRATOR_TEST_SLURM=1
#   .venv/bin/python -m pytest -q -n 0 tests/orchestrator/test_slurm.py
#
# Stop it: kill the pids in $1/*.pid and munged (its pid in /run/munge/munged.pid).
set -euo pipefail
dir=${1:-/tmp/orchestrator-slurm}
host=$(hostname)
mkdir -p "$dir"/{state,spool,log}
cat > "$dir/slurm.conf" <<CONF
ClusterName=orchestrator-test
SlurmctldHost=$host
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=30
# Two nodes, one machine: each slurmd on its own port (slurmd -N).
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=1 RealMemory=1000 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=1 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N n1
slurmd -f "$SLURM_CONF" -N n2
for _ in $(seq 60); do  # until both nodes are up
    [ "$(sinfo -h -t idle -o %D 2>/dev/null)" = 2 ] && { sinfo; exit 0; }
    sleep 1
done
echo "the nodes did not come up; see $dir/log/" >&2
exit 1
