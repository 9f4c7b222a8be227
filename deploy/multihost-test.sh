#!/usr/bin/env bash
# A multi-host test on one machine: 3 hosts and a client host in network namespaces joined
# by a bridge. Each host runs one rdask-node; they join through the seed's name (an
# /etc/hosts entry: --join /dns/seed/tcp/4001); a client on the fourth host runs a graph;
# then one host is cut off and the other two must carry on. The cluster has a secret
# (RDASK_CLUSTER_SECRET): a client without it must be refused. Nodes listen on 0.0.0.0 (as
# in the image) and must advertise their host's address.
#
#   sudo deploy/multihost-test.sh [TARGET_DIR]      (run by .ci/run after the tests)
#
# Needs root and iproute2. Where namespaces cannot be made, it says so and exits 0 with
# SKIPPED: it never passes without having run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/debug}"
NODE="$BIN/rdask-node"
CLI="$BIN/rdask"
CLIENT="$BIN/examples/connect"
for b in "$NODE" "$CLI" "$CLIENT"; do
  [ -x "$b" ] || { echo "multi-host test: $b is missing (cargo build -p rdask-node -p rdask --examples)"; exit 1; }
done
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "multi-host test SKIPPED: needs root and iproute2 (ip) to create network namespaces"
  exit 0
fi
if ! ip netns add rdask-probe 2>/tmp/rdask-netns-probe.err; then
  echo "multi-host test SKIPPED: cannot create network namespaces here: $(cat /tmp/rdask-netns-probe.err)"
  exit 0
fi
ip netns del rdask-probe

PIDS=()
cleanup() {
  # SIGKILL: a node stopped gracefully may spend 30 s handing over (to a host cut off),
  # keeping its namespace and link alive past this script.
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  for i in 1 2 3 4; do
    ip link del "rdveth$i" 2>/dev/null || true
    ip netns del "rdask-h$i" 2>/dev/null || true
    rm -rf "/etc/netns/rdask-h$i"
  done
  ip link del rdbr0 2>/dev/null || true
}
trap cleanup EXIT
cleanup

ip link add rdbr0 type bridge
ip link set rdbr0 up
for i in 1 2 3 4; do
  ip netns add "rdask-h$i"
  ip link add "rdveth$i" type veth peer name eth0 netns "rdask-h$i"
  ip link set "rdveth$i" master rdbr0 up
  ip netns exec "rdask-h$i" ip addr add "10.77.0.$i/24" dev eth0
  ip netns exec "rdask-h$i" ip link set eth0 up
  ip netns exec "rdask-h$i" ip link set lo up
  # `ip netns exec` shows /etc/netns/NAME/hosts as /etc/hosts inside the namespace.
  mkdir -p "/etc/netns/rdask-h$i"
  printf '127.0.0.1 localhost\n10.77.0.1 seed\n' > "/etc/netns/rdask-h$i/hosts"
done

LOGS=$(mktemp -d)
# The cluster has a secret: every node and client here has it (from the environment).
export RDASK_CLUSTER_SECRET="multi-host test secret $$"
start_node() { # host, extra args…
  local h=$1; shift
  # Listening on every interface, as in the image: each node must advertise its host's
  # address (10.77.0.N), not loopback, or the others cannot reach it.
  ip netns exec "rdask-h$h" env RUST_LOG=warn "$NODE" --listen /ip4/0.0.0.0/tcp/4001 \
    --nthreads 2 --cluster-size 4 --no-dashboard "$@" > "$LOGS/node$h.log" 2>&1 &
  PIDS+=($!)
  disown $!  # killed at the end: no job report
}
start_node 1
sleep 1
start_node 2 --join /dns/seed/tcp/4001
start_node 3 --join /dns/seed/tcp/4001

alive() { # node address seen from the client host → number of alive members
  ip netns exec rdask-h4 "$CLI" status "$1" 2>/dev/null | grep -c " alive " || true
}
wait_alive() { # address, count, seconds
  local deadline=$((SECONDS + $3))
  until [ "$(alive "$1")" = "$2" ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "multi-host test FAILED: $2 alive members not seen through $1 within $3 s"
      ip netns exec rdask-h4 "$CLI" status "$1" || true
      tail -n 20 "$LOGS"/node*.log
      exit 1
    fi
    sleep 0.5
  done
}
wait_alive /dns/seed/tcp/4001 3 30
echo "3 hosts joined through /dns/seed/tcp/4001"
# `rdask status` shows each member's first (advertised) address as host:port.
advertised=$(ip netns exec rdask-h4 "$CLI" status /dns/seed/tcp/4001 2>/dev/null | grep -cE " 10\.77\.0\.[123]:4001$" || true)
if [ "$advertised" != 3 ]; then
  echo "multi-host test FAILED: the members do not advertise their hosts' addresses first:"
  ip netns exec rdask-h4 "$CLI" status /dns/seed/tcp/4001 || true
  exit 1
fi
echo "each node advertises its host's address (listening on 0.0.0.0)"
if ip netns exec rdask-h4 env -u RDASK_CLUSTER_SECRET timeout 30 "$CLI" status /dns/seed/tcp/4001 >"$LOGS/nosecret.log" 2>&1; then
  echo "multi-host test FAILED: a client without the cluster secret was let in"
  exit 1
fi
grep -q "secret" "$LOGS/nosecret.log" || { echo "multi-host test FAILED: the refusal does not mention the secret:"; cat "$LOGS/nosecret.log"; exit 1; }
echo "a client without the cluster secret is refused"

run_graph() { # address
  local out
  out=$(ip netns exec rdask-h4 timeout 60 "$CLIENT" "$1" 2>&1) || { echo "$out"; return 1; }
  grep -q "sum of 1..=1000 computed on the cluster = 500500" <<<"$out" || { echo "$out"; return 1; }
}
run_graph /dns/seed/tcp/4001 || { echo "multi-host test FAILED: the graph from the client host"; exit 1; }
echo "a graph from the client host ran on the cluster"

# Cut host 3 off the network (no goodbye: its link goes down).
ip link set rdveth3 down
wait_alive /ip4/10.77.0.2/tcp/4001 2 60
run_graph /ip4/10.77.0.2/tcp/4001 || { echo "multi-host test FAILED: the graph after host 3 was cut off"; exit 1; }
echo "multi-host test passed: host 3 cut off, the other two carry on"
