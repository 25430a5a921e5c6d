#!/usr/bin/env bash
# slurm/local/start.sh [--nodes N] - start Siyada's Slurm test cluster on this machine, so that
# tests can submit real jobs (sbatch/srun, job arrays, signals, requeue, partition preemption,
# jobs across nodes, nodes that fail). Needs root; needs neither systemd nor cgroups.
# Made on Debian 12 with slurm-wlm 22.05.
#
# --nodes 1 (the default): one node, `localhost`, over loopback only.
# --nodes N (N >= 2): N nodes, each a network namespace with its own address on a private bridge,
# its own hostname and its own /dev/shm, running its own slurmd; slurmctld and munged run on the
# host. Ranks on different nodes talk TCP through the bridge, as on a real cluster; the file
# system is shared, as a cluster's shared file system is. node.sh kills, cuts and restarts nodes.
#
# Idempotent: when the cluster under $SIYADA_SLURM_ROOT is up with the same settings and its node
# is usable, it only prints the SLURM_CONF line. Otherwise it installs slurm-wlm + munge with
# apt-get if they are missing, and (re)starts the cluster from clean state.
#   success: removes $ROOT/unavailable, writes $ROOT/env.sh, prints `export SLURM_CONF=...`
#   failure: exits 1; one line saying why goes to stderr and to $ROOT/unavailable
# Settings (environment variables): see README.md.
set -Eeuo pipefail

NODES=${SIYADA_SLURM_NODES:-1}
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) NODES=${2:-}; shift; [ $# -gt 0 ] && shift ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    *) echo "start.sh: unknown argument '$1' (usage: start.sh [--nodes N])" >&2; exit 2 ;;
  esac
done
ROOT=${SIYADA_SLURM_ROOT:-/tmp/siyada-slurm}
CPUS=${SIYADA_SLURM_CPUS:-8}
AUTH=${SIYADA_SLURM_AUTH:-munge}
CTLD_PORT=${SIYADA_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${SIYADA_SLURM_SLURMD_PORT:-6818}
WAIT=${SIYADA_SLURM_WAIT:-60}
LINK_ETC=${SIYADA_SLURM_LINK_ETC:-1}
SUBNET=${SIYADA_SLURM_SUBNET:-10.77.0}   # multi-node: host .1, nodes .11, .12, ...
PREFIX=${SIYADA_SLURM_PREFIX:-siyada}     # multi-node: nodes siyada1..N, bridge siyada-br, ...
SHM_SIZE=${SIYADA_SLURM_SHM:-2g}         # multi-node: each node's private /dev/shm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$ROOT/etc/slurm.conf
MUNGE=$ROOT/munge
# Exported for the clients called below, and so that slurmd hands it down to every slurmstepd:
# stop.sh recognises this cluster's orphaned steps by it.
export SLURM_CONF=$CONF

T0=$(date +%s.%N)
log() { printf '[siyada-slurm start %s] %s\n' "$(date +%T)" "$*" >&2; }

# die REASON: the single line that says why there is no cluster, for people and for the tests.
# Daemons of a start that failed half way are stopped again: they would only hold the ports.
DIED=0
STARTING=0
die() {
  local why
  why=$(printf '%s' "$*" | tr -s '\n\t ' '   ')
  DIED=1
  printf '%s\n' "$why" 2> /dev/null > "$ROOT/unavailable" || true
  log "ERROR: $why"
  if [ "$STARTING" = 1 ]; then SIYADA_SLURM_ROOT=$ROOT bash "$HERE/stop.sh" >&2 9>&- || true; fi
  exit 1
}
# Any other failure (set -e) also leaves its line behind.
FAILED_AT=
trap 'FAILED_AT="line $LINENO: $BASH_COMMAND"' ERR
# shellcheck disable=SC2317 # run by the EXIT trap
on_exit() {
  local rc=$?
  [ "$rc" = 0 ] || [ "$DIED" = 1 ] || die "start.sh failed (exit $rc) at ${FAILED_AT:-?}"
}
trap on_exit EXIT

# last_line FILE [REGEX]: the last line of a log worth quoting: the last matching REGEX (default:
# an error), else the last line
last_line() {
  { grep -iE "${2:-error|fatal}" "$1" || cat "$1"; } 2> /dev/null | tail -n1
}

success() {
  rm -f "$ROOT/unavailable"
  printf 'export SLURM_CONF=%s\n' "$CONF" > "$ROOT/env.sh"
  link_etc
  log "$1; export SLURM_CONF=$CONF"
  echo "export SLURM_CONF=$CONF"
  exit 0
}

# Clients without SLURM_CONF read /etc/slurm/slurm.conf: point it here, but only ever replace a
# symlink (ours or another local cluster's), never a real file.
link_etc() {
  [ "$LINK_ETC" = 1 ] || return 0
  if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
    { mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf; } \
      || log "WARNING: could not link /etc/slurm/slurm.conf (use SLURM_CONF=$CONF)"
  else
    log "WARNING: /etc/slurm/slurm.conf is a real file; left alone (use SLURM_CONF=$CONF)"
  fi
}

# pid_alive PIDFILE COMM: the pidfile names a live process called COMM. Guards against stale
# pidfiles (after kill -9 or a reboot the PID may be gone or reused) and against zombies, which
# PID 1 in some containers reaps late.
pid_alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
# exited PIDFILE COMM: the daemon wrote its pidfile and has died since
exited() { [ -s "$1" ] && ! pid_alive "$1" "$2"; }

mkdir -p "$ROOT" 2>/dev/null || die "cannot create $ROOT"
[[ $NODES =~ ^[1-9][0-9]*$ ]] && [ "$NODES" -le 200 ] || die "--nodes must be a number from 1 to 200, not '$NODES'"
[[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "SIYADA_SLURM_SUBNET must be three numbers like 10.77.0, not '$SUBNET'"
[[ $PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "SIYADA_SLURM_PREFIX must be a lower-case name of at most 8 characters, not '$PREFIX'"
if [ "$NODES" = 1 ]; then
  NODE_NAMES=(localhost)
  CTL_HOST=localhost CTL_ADDR=127.0.0.1
else
  NODE_NAMES=()
  for i in $(seq "$NODES"); do NODE_NAMES+=("$PREFIX$i"); done
  CTL_HOST=$PREFIX-ctl CTL_ADDR=$SUBNET.1
fi
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "SIYADA_SLURM_CPUS must be a positive integer, not '$CPUS'"
case $AUTH in munge | none) ;; *) die "SIYADA_SLURM_AUTH must be munge or none, not '$AUTH'" ;; esac
[ "$(id -u)" = 0 ] || die "not root (uid $(id -u)): the local Slurm cluster's daemons must be started as root"

# One start at a time (several test processes may ask for the cluster together). Every daemon is
# started with 9>&-: one that inherited the lock would hold it for ever.
exec 9>> "$ROOT/start.lock"
flock -w 300 9 || die "another start.sh has held $ROOT/start.lock for 5 minutes"

# The first line of slurm.conf records the settings (and this script's version) it was made
# from; the fast path only applies while they are unchanged.
SETTINGS="nodes=$NODES cpus=$CPUS auth=$AUTH ports=$CTLD_PORT/$SLURMD_PORT"
[ "$NODES" = 1 ] || SETTINGS="$SETTINGS subnet=$SUBNET prefix=$PREFIX shm=$SHM_SIZE"
SETTINGS="$SETTINGS script=$(cat "${BASH_SOURCE[0]}" "$HERE/node.sh" | sha1sum | cut -c1-12)"

# node_states: one line per node that answers, "NAME STATE"
node_states() { sinfo -h -N -o '%N %T' 2> /dev/null | sort -u; }
# all_in STATES...: every node is in one of these states
all_in() {
  local states n=0 name st
  states=$(node_states)
  while read -r name st; do
    [ -n "$name" ] || continue
    n=$((n + 1))
    [[ " $* " == *" $st "* ]] || return 1
  done <<< "$states"
  [ "$n" = "$NODES" ]
}
slurmds_alive() {
  local name
  for name in "${NODE_NAMES[@]}"; do pid_alive "$ROOT/run/slurmd-$name.pid" slurmd || return 1; done
}

# ---------------------------------------------------------------- fast path
if [ "$(head -n1 "$CONF" 2>/dev/null)" = "# siyada local cluster: $SETTINGS" ] \
  && pid_alive "$ROOT/run/slurmctld.pid" slurmctld && slurmds_alive \
  && { [ "$AUTH" = none ] || pid_alive "$MUNGE/run/munged.pid" munged; }; then
  all_in idle mixed allocated completing && success "already up ($(node_states | tr '\n' ' '))"
  log "daemons are running but the nodes are '$(node_states | tr '\n' ' ')'; restarting"
elif [ -f "$CONF" ] && [ "$(head -n1 "$CONF")" != "# siyada local cluster: $SETTINGS" ]; then
  log "settings changed (was: $(head -n1 "$CONF" | sed 's/^# siyada local cluster: //')); restarting"
fi

# ---------------------------------------------------------------- install
missing=()
for b in slurmctld slurmd sbatch srun sinfo squeue scancel scontrol; do
  command -v "$b" > /dev/null || missing+=("$b")
done
if [ "$NODES" -gt 1 ]; then
  for b in ip nsenter unshare; do
    command -v "$b" > /dev/null || die "$NODES nodes need '$b' (iproute2, util-linux), which is missing"
  done
fi
if [ "$AUTH" = munge ]; then
  for b in munged munge unmunge; do command -v "$b" > /dev/null || missing+=("$b"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get > /dev/null \
    || die "Slurm is not installed (missing ${missing[*]}) and there is no apt-get to install it"
  log "installing slurm-wlm slurm-client munge with apt-get (missing ${missing[*]})"
  mkdir -p "$ROOT/log"
  # No service may start during the install: there is no init system to run them, and the
  # packaged ones would fail without /etc/slurm/slurm.conf. Exit 101 = "action forbidden".
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  installed=1
  {
    apt-get update -q || echo "(apt-get update failed; trying the install with the lists there are)"
    apt-get install -y -q --no-install-recommends slurm-wlm slurm-client munge
  } > "$ROOT/log/apt.log" 2>&1 9>&- || installed=0
  if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ "$installed" = 1 ] \
    || die "apt-get install slurm-wlm slurm-client munge failed: $(last_line "$ROOT/log/apt.log" "^E:") (see $ROOT/log/apt.log)"
  for b in "${missing[@]}"; do
    command -v "$b" > /dev/null || die "$b is still missing after installing slurm-wlm slurm-client munge"
  done
fi
log "$(slurmctld -V)$([ "$AUTH" = none ] || echo ", $(munged --version 2>&1 | awk '{print $1}')")"

# ---------------------------------------------------------------- clean slate
# Stop whatever of ours is (half) up, jobs and orphaned steps included, and forget the old
# job/node state: after a kill -9 it would bring back jobs and a node marked down.
SIYADA_SLURM_ROOT=$ROOT bash "$HERE/stop.sh" >&2 9>&-
rm -rf "$ROOT/state"
mkdir -p "$ROOT"/{etc,state/ctld,log,run}
chmod 755 "$ROOT" "$ROOT/etc" "$ROOT/log" "$ROOT/run" # jobs of any user read the config
chmod 700 "$ROOT/state/ctld"
# What stop.sh and node.sh need to know of this cluster, written before anything is made.
printf 'NODES=%s\nPREFIX=%s\nSUBNET=%s\nCONF=%s\nSHM_SIZE=%s\n' \
  "$NODES" "$PREFIX" "$SUBNET" "$CONF" "$SHM_SIZE" > "$ROOT/cluster.env"

# ---------------------------------------------------------------- network (multi-node)
# One bridge on the host (address .1, slurmctld's); per node a network namespace whose eth0 is
# one end of a veth pair, the other end on the bridge. Names resolve through /etc/hosts lines
# marked with this cluster's root, so that stop.sh removes exactly those.
STARTING=1
if [ "$NODES" -gt 1 ]; then
  BRIDGE=$PREFIX-br
  MARK="# siyada-slurm $ROOT"
  : > "$ROOT/log/net.log"
  { ip link add "$BRIDGE" type bridge && ip addr add "$CTL_ADDR/24" dev "$BRIDGE" \
      && ip link set "$BRIDGE" up; } 2>> "$ROOT/log/net.log" \
    || die "cannot make the bridge $BRIDGE ($CTL_ADDR/24): $(last_line "$ROOT/log/net.log")"
  hosts="$CTL_ADDR $CTL_HOST $MARK"
  for i in $(seq "$NODES"); do
    ns=$PREFIX-ns$i
    { ip netns add "$ns" && ip -n "$ns" link set lo up \
        && ip link add "$PREFIX-v$i" type veth peer name eth0 netns "$ns" \
        && ip link set "$PREFIX-v$i" master "$BRIDGE" && ip link set "$PREFIX-v$i" up \
        && ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0 \
        && ip -n "$ns" link set eth0 up; } 2>> "$ROOT/log/net.log" \
      || die "cannot make the network namespace of node $PREFIX$i: $(last_line "$ROOT/log/net.log")"
    hosts="$hosts
$SUBNET.$((10 + i)) $PREFIX$i $MARK"
  done
  printf '%s\n' "$hosts" >> /etc/hosts || die "cannot add the nodes' names to /etc/hosts"
  for name in "$CTL_HOST" "${NODE_NAMES[@]}"; do
    getent hosts "$name" > /dev/null || die "$name does not resolve after adding it to /etc/hosts"
  done
fi

port_busy() { (exec 3<> "/dev/tcp/$CTL_ADDR/$1") 2> /dev/null; }
for p in "$CTLD_PORT" "$SLURMD_PORT"; do
  if port_busy "$p"; then
    die "$CTL_ADDR:$p is in use (another Slurm?); stop it or set SIYADA_SLURM_CTLD_PORT / SIYADA_SLURM_SLURMD_PORT"
  fi
done

# ---------------------------------------------------------------- slurm.conf
MEM=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo) # MB, with headroom
# NoCtldInAddrAny/NoInAddrAny bind to the address that the *hostname* resolves to, so they keep
# everything on loopback only where that address is 127.0.0.1; elsewhere slurmctld would be
# unreachable through 127.0.0.1, and the daemons listen on all addresses instead.
COMM="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
if [ "$NODES" -gt 1 ]; then
  # slurmctld binds the bridge's address (its hostname, $CTL_HOST, resolves to it); the nodes'
  # daemons are alone in their namespaces, and clients on the host must not bind 127.0.0.1.
  COMM="CommunicationParameters=NoCtldInAddrAny"
elif [ "$(getent ahostsv4 "$(uname -n)" 2> /dev/null | awk 'NR == 1 {print $1}')" != 127.0.0.1 ]; then
  COMM="# $COMM (not used: $(uname -n) does not resolve to 127.0.0.1)"
fi
if [ "$AUTH" = munge ]; then
  AUTHCONF="AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/run/munge.socket,cred_expire=5"
else
  AUTHCONF="AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5"
fi

cat > "$CONF.new" << EOF
# siyada local cluster: $SETTINGS
# Written by slurm/local/start.sh: $NODES node(s).
ClusterName=siyada-local
SlurmctldHost=$CTL_HOST($CTL_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
$COMM
# A requeued job may not start again on the node it left until its credential expires (default
# 120 s): cred_expire=5 turns a 121 s wait into about 6 s.
$AUTHCONF
SlurmUser=root
StateSaveLocation=$ROOT/state/ctld
SlurmdSpoolDir=$ROOT/state/d-%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
# the default, /usr/bin/mail, is usually not installed: jobs asking for mail would fail to send it
MailProg=/bin/true
# no cgroups: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2,bf_interval=2
# Jobs in 'urgent' preempt jobs in 'debug' by requeueing them; a job's --signal is sent when its
# 10 s grace time starts.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
KillWait=5
MinJobAge=300
# a node that was down comes back by itself once its slurmd registers
ReturnToService=2
# a node whose slurmd stops answering is DOWN after 20 s (default 300), and its jobs requeued
SlurmdTimeout=20
# The node advertises $CPUS CPUs whatever the machine has (tests run several multi-task jobs at
# once on 2 cores); config_overrides stops slurmd from draining it for having fewer.
SlurmdParameters=config_overrides
EOF
{
  if [ "$NODES" = 1 ]; then
    echo "# NodeName is not this host's name ($(uname -n)): slurmd is started with -N localhost."
    echo "NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN"
  else
    for i in $(seq "$NODES"); do
      echo "NodeName=$PREFIX$i NodeAddr=$SUBNET.$((10 + i)) NodeHostname=$PREFIX$i CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN"
    done
  fi
  nodes=$(IFS=,; echo "${NODE_NAMES[*]}")
  echo "PartitionName=debug Nodes=$nodes Default=YES PriorityTier=1 GraceTime=10"
  echo "PartitionName=urgent Nodes=$nodes PriorityTier=2"
} >> "$CONF.new"
chmod 644 "$CONF.new"
mv -f "$CONF.new" "$CONF"

# ---------------------------------------------------------------- munge
# A private munged with its own key and socket, so that the machine's munge (if any) is left
# alone. Its socket directory must stay o+x: jobs of any user talk to it.
if [ "$AUTH" = munge ]; then
  mkdir -p "$MUNGE"/{etc,run,lib,log}
  chmod 755 "$MUNGE" "$MUNGE/run"
  chmod 700 "$MUNGE/etc" "$MUNGE/lib" "$MUNGE/log"
  if [ ! -s "$MUNGE/etc/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$MUNGE/etc/munge.key" bs=128 count=1 status=none)
  fi
  chmod 600 "$MUNGE/etc/munge.key"
  rm -f "$MUNGE/run/munge.socket" "$MUNGE/run/munge.socket.lock" # left by a kill -9
  munged --socket="$MUNGE/run/munge.socket" --key-file="$MUNGE/etc/munge.key" \
    --pid-file="$MUNGE/run/munged.pid" --seed-file="$MUNGE/lib/munged.seed" \
    --log-file="$MUNGE/log/munged.log" 9>&- \
    || die "munged did not start: $(last_line "$MUNGE/log/munged.log")"
  roundtrip() { munge -S "$MUNGE/run/munge.socket" -n | unmunge -S "$MUNGE/run/munge.socket" > /dev/null; }
  for _ in $(seq 50); do roundtrip 2> /dev/null && break; sleep 0.1; done
  roundtrip 2> /dev/null || die "munged runs but a munge/unmunge round trip fails: $(last_line "$MUNGE/log/munged.log")"
fi

# ---------------------------------------------------------------- daemons
: > "$ROOT/log/slurmctld.log"
for name in "${NODE_NAMES[@]}"; do : > "$ROOT/log/slurmd-$name.log"; done
log "starting slurmctld"
if [ "$NODES" = 1 ]; then
  slurmctld -f "$CONF" 9>&- || die "slurmctld did not start: $(last_line "$ROOT/log/slurmctld.log")"
else
  # slurmctld runs only where its hostname is SlurmctldHost's: a UTS namespace of its own.
  unshare --uts sh -c 'hostname "$1" && exec slurmctld -f "$2"' sh "$CTL_HOST" "$CONF" 9>&- \
    || die "slurmctld did not start: $(last_line "$ROOT/log/slurmctld.log")"
fi
ctld_up() { timeout 5 scontrol ping 2> /dev/null | grep -q 'is UP'; }
for _ in $(seq 100); do
  ctld_up && break
  exited "$ROOT/run/slurmctld.pid" slurmctld && die "slurmctld exited: $(last_line "$ROOT/log/slurmctld.log") (see $ROOT/log/slurmctld.log)"
  sleep 0.1
done
ctld_up || die "slurmctld does not answer: $(last_line "$ROOT/log/slurmctld.log") (see $ROOT/log/slurmctld.log)"

for name in "${NODE_NAMES[@]}"; do
  log "starting slurmd of node $name"
  SIYADA_SLURM_ROOT=$ROOT bash "$HERE/node.sh" start "$name" 9>&- \
    || die "slurmd of node $name did not start: $(last_line "$ROOT/log/slurmd-$name.log")"
done
deadline=$(($(date +%s) + WAIT))
resumed=0
until all_in idle; do
  if [ "$resumed" = 0 ] && node_states | grep -qE ' (down|drain)'; then
    scontrol update NodeName="$(IFS=,; echo "${NODE_NAMES[*]}")" State=RESUME 2> /dev/null || true
    resumed=1
  fi
  for name in "${NODE_NAMES[@]}"; do
    if exited "$ROOT/run/slurmd-$name.pid" slurmd; then
      die "slurmd of node $name exited: $(last_line "$ROOT/log/slurmd-$name.log") (see $ROOT/log/slurmd-$name.log)"
    fi
  done
  if [ "$(date +%s)" -ge "$deadline" ]; then
    scontrol show nodes >&2 || true
    tail -n 20 "$ROOT/log/slurmctld.log" "$ROOT"/log/slurmd-*.log >&2 || true
    die "the nodes are '$(node_states | tr '\n' ' ')', not all idle, ${WAIT}s after slurmd started (see $ROOT/log/)"
  fi
  sleep 0.2
done
sinfo >&2
success "up in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
