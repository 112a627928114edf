"""``hsmpool [--config FILE] cluster status [--config FILE] [--json]``: the nodes that
serve on this configuration's store.

Reads the store's ``nodes`` table (kms/cluster.py) without the HSM pool: each node's id
(``host:port``), address, version of hsmpool, workers serving, start and last heartbeat
(with its age), and state: ``up``, ``stale`` (silent for more than three heartbeats) or
``stopped`` (a clean stop). Exit status 0 whatever the nodes' states.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kms.cli.server import _config


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from kms.cli import iso_time, open_records, print_table
    from kms.cluster import STALE_BEATS, node_status

    with open_records(_config(args), audit=False) as (store, _):
        nodes = node_status(store.list_nodes(), time.time())
    docs = [{"NodeId": s.node.node_id, "Hostname": s.node.hostname,
             "Address": s.node.address, "Version": s.node.version, "Pid": s.node.pid,
             "Workers": s.node.workers, "Started": iso_time(s.node.started),
             "LastHeartbeat": iso_time(s.node.heartbeat),
             "HeartbeatAgeSeconds": round(s.age, 1),
             "HeartbeatIntervalSeconds": s.node.beat_interval, "State": s.state}
            for s in nodes]
    if args.json:
        print(json.dumps({"Nodes": docs}, indent=2))
        return 0
    if not docs:
        print("no node has served on this store yet", file=sys.stderr)
        return 0
    print_table(("NODE", "ADDRESS", "VERSION", "WORKERS", "STARTED", "LAST HEARTBEAT",
                 "STATE"),
                [(d["NodeId"], d["Address"], d["Version"], d["Workers"], d["Started"],
                  f"{d['HeartbeatAgeSeconds']:.1f} s ago", d["State"]) for d in docs])
    up = sum(1 for s in nodes if s.state == "up")
    print(f"{up} of {len(nodes)} nodes up (stale: no heartbeat for more than "
          f"{STALE_BEATS} intervals)", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = sub.add_parser("cluster", help="the nodes serving on this store")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    status = csub.add_parser("status", help="nodes seen, their versions and heartbeats",
                             description="Nodes seen, their versions, workers and last "
                                         "heartbeat; stale ones marked.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--config", default=argparse.SUPPRESS,  # as hsmpool --config
                        help="configuration (TOML); default $HSMPOOL_CONFIG or "
                             "var/hsmpool.toml")
    status.set_defaults(func=cmd_cluster_status)
