#!/usr/bin/env bash
# slurm/local/node.sh - one node of the local Slurm test cluster that start.sh made.
#
#   node.sh start NODE     start the node's slurmd (in the node's namespaces, see README.md)
#   node.sh kill NODE      SIGKILL the node's slurmd and every process on the node, as when a
#                          node loses power: its peers' connections are reset
#   node.sh cut NODE       take the node's link down, as when a node vanishes silently: its
#                          processes go on, its peers get no reset, only silence
#   node.sh restore NODE   bring the link back up
#   node.sh pids NODE      the PIDs of every process on the node, one per line
#
# NODE is a node name (siyada2) or its number (2). Only `start` applies to the one-node cluster
# (node localhost); the others need a multi-node one (start.sh --nodes N, N >= 2).
# Reads $SIYADA_SLURM_ROOT/cluster.env, which start.sh writes. Exits 2 on a bad call.
set -uo pipefail

ROOT=${SIYADA_SLURM_ROOT:-/tmp/siyada-slurm}
usage() { echo "usage: node.sh start|kill|cut|restore|pids NODE  ($*)" >&2; exit 2; }
[ $# = 2 ] || usage "two arguments"
ACTION=$1
[ -r "$ROOT/cluster.env" ] || usage "no cluster under $ROOT: run start.sh first"
# NODES, PREFIX, SUBNET, CONF, SHM_SIZE
# shellcheck source=/dev/null
. "$ROOT/cluster.env"
export SLURM_CONF=$CONF

if [ "$NODES" = 1 ]; then
  [ "$2" = localhost ] || [ "$2" = 1 ] || usage "the one-node cluster has node localhost only"
  [ "$ACTION" = start ] || usage "'$ACTION' needs a multi-node cluster (start.sh --nodes 2)"
  exec slurmd -f "$CONF" -N localhost 9>&-
fi

i=${2#"$PREFIX"}
[[ $i =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$NODES" ] \
  || usage "no node '$2' (nodes ${PREFIX}1 to ${PREFIX}$NODES)"
NAME=$PREFIX$i
NETNS=/var/run/netns/$PREFIX-ns$i
VETH=$PREFIX-v$i # the host's end of the node's link

# on_node: the PIDs of every process in the node's network namespace
on_node() {
  local want p
  want=$(stat -L -c %i "$NETNS" 2> /dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %i "$p/ns/net" 2> /dev/null)" = "$want" ] && echo "${p#/proc/}"
  done
  return 0
}

case $ACTION in
  start)
    # Its own hostname (UTS namespace) and its own /dev/shm (mount namespace): two "nodes" that
    # shared one /dev/shm deadlocked mosaicml-streaming's node leaders (see README.md). Entered
    # with nsenter --net, not `ip netns exec`, which remounts /sys and so hides the cgroup
    # tree slurmd needs. slurmd forks into the background; the namespaces go with it.
    exec nsenter --net="$NETNS" unshare --uts --mount --propagation private \
      sh -c 'hostname "$1" && mount -t tmpfs -o size="$3" tmpfs /dev/shm && exec slurmd -f "$2" -N "$1"' \
      sh "$NAME" "$CONF" "$SHM_SIZE" 9>&-
    ;;
  kill)
    # shellcheck disable=SC2046 # one PID per word
    pids=$(on_node)
    [ -n "$pids" ] && kill -KILL $pids 2> /dev/null
    rm -f "$ROOT/run/slurmd-$NAME.pid"
    echo "killed node $NAME: $(echo "$pids" | wc -w) process(es)"
    ;;
  cut) ip link set "$VETH" down && echo "cut the link of node $NAME" ;;
  restore) ip link set "$VETH" up && echo "restored the link of node $NAME" ;;
  pids) on_node ;;
  *) usage "unknown action '$ACTION'" ;;
esac
