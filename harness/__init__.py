"""The test and benchmark harness: private servers on free ports, a Redis Cluster, proxies that add latency or
faults, and process control. Repository only: the ``cachelayer`` wheel does not contain it (docs/development.md).

==========================  ====================================================================================
module                      what
==========================  ====================================================================================
:mod:`harness.servers`      :func:`free_port`, :func:`port_answers`, :func:`wait_for`; :class:`RedisServer`,
                            :class:`SecantusServer`, :class:`MariaDBServer` (a :class:`ServerProcess` each:
                            stop / kill / restart on the same port / freeze, by PID); :func:`stop_all`
:mod:`harness.cluster`      :class:`RedisClusterServer`: 3 masters + 3 replicas to kill, freeze, reshard
:mod:`harness.proxy`        :class:`LatencyProxy`, the one TCP proxy: latency per direction, modes pass / refuse
                            / blackhole / drop_replies, dropped connections, in the caller's loop;
                            :class:`FaultProxy` is the same class built as the chaos benchmark does
:mod:`harness.faults`       :class:`ProxyProcess`: that proxy in a child process, switched by commands on stdin
:mod:`harness.services`     pytest-facing: where the machine's services are, skip (or fail in CI) without them
==========================  ====================================================================================

Everything but :mod:`harness.services` is importable from here (``from harness import RedisServer``) and works
without pytest, so benchmarks use it too.
"""

from __future__ import annotations

from harness.cluster import (
    CACHE_CLUSTER_ARGS,
    ClusterNodeInfo,
    ClusterUnavailable,
    RedisClusterServer,
    cluster_supported,
)
from harness.faults import ProxyProcess
from harness.proxy import MODES, FaultProxy, LatencyProxy, Mode
from harness.servers import (
    LOCALHOST,
    REPO_ROOT,
    MariaDBServer,
    RedisServer,
    SecantusServer,
    ServerProcess,
    ServerUnavailable,
    free_port,
    port_answers,
    python_env,
    redis_ping,
    secantusd_binary,
    stop_all,
    wait_for,
)

__all__ = [
    "CACHE_CLUSTER_ARGS",
    "LOCALHOST",
    "MODES",
    "REPO_ROOT",
    "ClusterNodeInfo",
    "ClusterUnavailable",
    "FaultProxy",
    "LatencyProxy",
    "MariaDBServer",
    "Mode",
    "ProxyProcess",
    "RedisClusterServer",
    "RedisServer",
    "SecantusServer",
    "ServerProcess",
    "ServerUnavailable",
    "cluster_supported",
    "free_port",
    "port_answers",
    "python_env",
    "redis_ping",
    "secantusd_binary",
    "stop_all",
    "wait_for",
]
