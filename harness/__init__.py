"""The test and benchmark harness: private servers on free ports, a Redis Cluster, proxies that add latency or
faults, and process control. Repository only: the ``cachelayer`` wheel does not contain it (docs/development.md).

==========================  ====================================================================================
module                      what
==========================  ====================================================================================
:mod:`harness.servers`      :func:`free_port`, :func:`port_answers`, :func:`wait_for`; :class:`RedisServer`,
                            :class:`SecantusServer`, :class:`MariaDBServer` (a :class:`ServerProcess` each:
                            stop / kill / restart on the same port / freeze, by PID); :func:`stop_all`
:mod:`harness.cluster`      :class:`RedisClusterServer`: 3 masters + 3 replicas to kill, freeze, reshard
:mod:`harness.proxy`        :class:`LatencyProxy`: latency, blackhole, dropped connections, in the caller's loop
:mod:`harness.faults`       :class:`FaultProxy` and :class:`ProxyProcess` (the same in a child process): modes
                            pass / refuse / blackhole / drop_replies, for the chaos benchmark
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
from harness.faults import MODES, FaultProxy, Mode, ProxyProcess
from harness.proxy import LatencyProxy
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
