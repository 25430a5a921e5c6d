#!/usr/bin/env bash
# slurm/local/stop.sh - stop the local Slurm test cluster started by start.sh.
# Cancels every job and waits for them to go, stops every node's slurmd, slurmctld and the
# private munged (only the PIDs in this cluster's pidfiles, never by name), kills steps that a
# dead slurmd left behind, removes a multi-node cluster's network (namespaces, bridge, its
# /etc/hosts lines) and the /etc/slurm/slurm.conf symlink if it points here.
# Usage: stop.sh [--purge]    --purge also deletes $SIYADA_SLURM_ROOT. Always exits 0.
set -uo pipefail

ROOT=${SIYADA_SLURM_ROOT:-/tmp/siyada-slurm}
CONF=$ROOT/etc/slurm.conf
export SLURM_CONF=$CONF
PURGE=0
[ "${1:-}" = --purge ] && PURGE=1

log() { printf '[siyada-slurm stop %s] %s\n' "$(date +%T)" "$*" >&2; }

# live_pid PIDFILE COMM: print the PID if the pidfile names a live (non-zombie) process called
# COMM; a stale pidfile may name a PID that is gone or now belongs to something else.
live_pid() {
  local pid
  pid=$(cat "$1" 2> /dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  gone "$pid" && return 1
  [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = "$2" ] && echo "$pid"
}

# gone PID: exited; a zombie counts, since PID 1 in some containers reaps late
gone() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2> /dev/null) || return 0
  [ "$st" = Z ]
}

# stop_pid NAME PID: SIGTERM, then SIGKILL after 10 s
stop_pid() {
  kill -TERM "$2" 2> /dev/null || return 0
  for _ in $(seq 100); do
    gone "$2" && { log "$1 ($2) stopped"; return 0; }
    sleep 0.1
  done
  log "$1 ($2) ignored SIGTERM for 10 s; sending SIGKILL"
  kill -KILL "$2" 2> /dev/null
  for _ in $(seq 50); do gone "$2" && return 0; sleep 0.1; done
  log "WARNING: $1 ($2) is still there"
}

# Steps whose slurmd died uncleanly (kill -9, or stopped with jobs still running: slurmstepd
# outlives slurmd by design) keep running their jobs. This cluster's slurmstepds carry
# SLURM_CONF=$CONF in their environment (start.sh exports it to slurmd); kill them and all
# their descendants.
kill_orphan_steps() {
  local p roots="" all
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2> /dev/null)" = slurmstepd ] || continue
    if tr '\0' '\n' 2> /dev/null < "$p/environ" | grep -qxF "SLURM_CONF=$CONF"; then
      roots="$roots ${p#/proc/}"
    fi
  done
  [ -n "$roots" ] || return 0
  all=$(ps -eo pid=,ppid= | awk -v roots="$roots" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } } while (grew)
      for (p in keep) print p
    }')
  log "killing leftover job processes: $(echo "$all" | tr "\n" " ")"
  # shellcheck disable=SC2086 # one PID per word
  kill -KILL $all 2> /dev/null
}

CTLD=$(live_pid "$ROOT/run/slurmctld.pid" slurmctld) || CTLD=
SLURMD=
for f in "$ROOT"/run/slurmd-*.pid "$ROOT/run/slurmd.pid"; do # slurmd.pid: before --nodes
  pid=$(live_pid "$f" slurmd) && SLURMD="$SLURMD $pid"
done
SLURMD=${SLURMD# }
MUNGED=$(live_pid "$ROOT/munge/run/munged.pid" munged) || MUNGED=

# 1. cancel every job, and let slurmd end its steps while it still can
if [ -n "$CTLD" ] && [ -n "$SLURMD" ]; then
  jobs=$(squeue -h -o %A 2> /dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086 # one job id per word
    scancel $jobs 2> /dev/null
    for _ in $(seq 150); do
      [ -z "$(squeue -h 2> /dev/null)" ] && break
      sleep 0.2
    done
    left=$(squeue -h 2> /dev/null | wc -l)
    [ "$left" = 0 ] || log "WARNING: $left job(s) still listed after 30 s"
  fi
fi

# 2. the daemons, in reverse start order
for pid in $SLURMD; do stop_pid slurmd "$pid"; done
[ -n "$CTLD" ] && stop_pid slurmctld "$CTLD"
[ -n "$MUNGED" ] && stop_pid munged "$MUNGED"
[ -z "$SLURMD$CTLD$MUNGED" ] && log "nothing was running under $ROOT"
kill_orphan_steps
rm -f "$ROOT/run/slurmctld.pid" "$ROOT"/run/slurmd*.pid "$ROOT/munge/run/munged.pid"

# 3. a multi-node cluster's network: what start.sh recorded in cluster.env
if [ -r "$ROOT/cluster.env" ]; then
  # shellcheck source=/dev/null
  . "$ROOT/cluster.env"
  if [ "${NODES:-1}" -gt 1 ]; then
    for i in $(seq "$NODES"); do
      # a process still in a namespace would keep it alive after `ip netns del`
      pids=$(SIYADA_SLURM_ROOT=$ROOT bash "$(dirname "${BASH_SOURCE[0]}")/node.sh" pids "$i")
      # shellcheck disable=SC2086 # one PID per word
      [ -n "$pids" ] && kill -KILL $pids 2> /dev/null
      ip netns del "$PREFIX-ns$i" 2> /dev/null
    done
    ip link del "$PREFIX-br" 2> /dev/null
    # Lines that end in this cluster's mark (another root's mark may start the same way).
    # Rewritten in place, not with sed -i: /etc/hosts may be a bind mount, which a rename breaks.
    kept=$(awk -v m="# siyada-slurm $ROOT" 'substr($0, length($0) - length(m) + 1) != m' /etc/hosts)
    [ "$kept" = "$(cat /etc/hosts)" ] || printf '%s\n' "$kept" > /etc/hosts
    log "removed the network of $NODES nodes (namespaces $PREFIX-ns*, bridge $PREFIX-br, /etc/hosts lines)"
  fi
fi

# 4. our /etc symlink
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
  rm -f /etc/slurm/slurm.conf
fi

if [ "$PURGE" = 1 ] && [ -e "$ROOT" ]; then
  case $(realpath -m "$ROOT") in
    / | /tmp | /etc | /usr | /var | /home | /root) log "refusing to purge '$ROOT'" ;;
    *) rm -rf "$ROOT" && log "purged $ROOT" ;;
  esac
fi
exit 0
