"""``hsmpool cluster status`` on the session's one-node server (on its SQLite store, or on
the PostgreSQL pass its database; several PostgreSQL nodes: test_postgres_nodes.py)."""

from __future__ import annotations

import subprocess

from kms.cluster import VERSION
from tests.server.conftest import HSMPOOL, Server, cluster_status


def test_the_session_node_appears_in_cluster_status(server: Server) -> None:
    doc = cluster_status(server.config)
    (node,) = [n for n in doc["Nodes"] if n["NodeId"].endswith(f":{server.port}")]
    assert (node["Address"], node["State"], node["Workers"], node["Version"]) == (
        server.url, "up", 1, VERSION), node
    assert node["Pid"] == server.proc.pid
    text = subprocess.run([str(HSMPOOL), "--config", str(server.config), "cluster", "status"],
                          check=True, capture_output=True, text=True, timeout=60)
    (line,) = [ln for ln in text.stdout.splitlines() if ln.startswith(node["NodeId"])]
    assert line.split()[1:4] == [server.url, VERSION, "1"] and line.endswith("up")
    assert "nodes up" in text.stderr
