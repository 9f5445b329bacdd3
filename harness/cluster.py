"""A private Redis Cluster on loopback for tests and benchmarks: 3 masters + 3 replicas on free ports.

    with RedisClusterServer(node_timeout_ms=2000) as cluster:
        client = redis.asyncio.RedisCluster.from_url(cluster.redis_url)
        victim = cluster.masters()[0]
        cluster.kill(victim)                 # SIGKILL by PID, as a crash would
        cluster.wait_until_ok(timeout=10)    # a replica took over its slots
        cluster.restart(victim)              # back as a replica of the new master

A machine that cannot run one raises :class:`ClusterUnavailable` (a :class:`~harness.servers.ServerUnavailable`:
the tests skip, or fail in CI). Every node is a :class:`~harness.servers.ServerProcess`: stopped by its own PID,
and by :func:`harness.servers.stop_all` at exit if a crashed run left it behind.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import redis

from harness.servers import LOCALHOST, ServerProcess, ServerUnavailable, free_port, redis_ping, wait_for

__all__ = [
    "CACHE_CLUSTER_ARGS",
    "ClusterNodeInfo",
    "ClusterUnavailable",
    "RedisClusterServer",
    "cluster_supported",
]

HASH_SLOTS: Final = 16384
#: A cache cluster keeps its healthy shards serving while one fails over (docs/operations.md, "Redis Cluster").
CACHE_CLUSTER_ARGS: Final = ("--cluster-require-full-coverage", "no")


class ClusterUnavailable(ServerUnavailable):
    """redis-server / redis-cli are missing or cannot run in cluster mode here."""


def cluster_supported() -> str | None:
    """None when a cluster can be started here, else the reason it cannot."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        return "redis-server and redis-cli are needed for a Redis Cluster (apt-get install redis-server)"
    try:
        version = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run redis-server: {exc}"
    # "Redis server v=7.0.15 ...": sharded pub/sub needs 7.0, cluster mode itself 3.0.
    try:
        major = int(version.split("v=", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return f"cannot read the redis-server version from {version!r}"
    if major < 7:
        return f"redis-server {major}.x is too old for this cluster (7.0+ for sharded pub/sub)"
    return None


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slot_count: int

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags


class ClusterNodeProcess(ServerProcess):
    """One ``redis-server --cluster-enabled yes`` with its nodes.conf in its own directory, so a
    :meth:`start` after a kill brings back the same node (same ID) rather than a stranger."""

    name = "redis-cluster-node"

    def __init__(self, port: int, workdir: Path, node_timeout_ms: int, extra_args: tuple[str, ...]) -> None:
        super().__init__(workdir, port=port)
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = extra_args

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterUnavailable("redis-server is not installed")
        return [binary, "--daemonize", "no", "--bind", self.host, "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--logfile", "",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # replicas sync at once instead of waiting 5 s for more replicas to share one RDB
                "--repl-diskless-sync-delay", "0", *self.extra_args]

    def answers(self) -> bool:
        return redis_ping(self.host, self.port, timeout=0.5)


class RedisClusterServer:
    """A Redis Cluster of ``masters`` masters with one replica each, on free loopback ports.

    ``extra_args`` go to every redis-server (e.g. ``("--cluster-require-full-coverage", "no")``).
    """

    def __init__(self, *, masters: int = 3, node_timeout_ms: int = 2000, workdir: Path | None = None,
                 extra_args: tuple[str, ...] = (), start_timeout: float = 30.0,
                 ports: list[int] | None = None) -> None:
        self.host = LOCALHOST
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        count = masters * 2
        chosen = ports if ports is not None else self._free_ports(count)
        if len(chosen) != count:
            raise ValueError(f"{count} ports needed, got {len(chosen)}")
        self.nodes: dict[int, ClusterNodeProcess] = {
            port: ClusterNodeProcess(port, self.workdir / str(port), node_timeout_ms, extra_args)
            for port in chosen
        }

    @staticmethod
    def _free_ports(count: int) -> list[int]:
        # Redis also listens on port + 10000 (the cluster bus): both must be free.
        ports: list[int] = []
        for _ in range(count * 50):
            port = free_port()
            # Nor may one node's port be another's bus port: all ports are chosen before any node binds its bus.
            clashes = {port, port + 10000, port - 10000} & {p for chosen in ports for p in (chosen, chosen + 10000)}
            if port + 10000 < 65536 and not clashes and not _port_taken(port + 10000):
                ports.append(port)
            if len(ports) == count:
                return ports
        raise ClusterUnavailable("could not find free ports for the cluster")

    # -- addresses
    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(self.host, port) for port in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first node (a master right after start)."""
        return f"redis+cluster://{self.host}:{self.ports[0]}"

    @property
    def redis_url(self) -> str:
        """The same node as ``redis://``, the form ``RedisCluster.from_url`` takes."""
        return f"redis://{self.host}:{self.ports[0]}"

    # -- lifecycle
    def start(self) -> Self:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ClusterUnavailable("redis-cli is not installed")
        try:
            for node in self.nodes.values():
                node.start(timeout=self.start_timeout)
            addresses = [f"{self.host}:{port}" for port in self.nodes]
            created = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True, text=True, timeout=self.start_timeout, stdin=subprocess.DEVNULL,
            )
            if created.returncode != 0:
                raise ClusterUnavailable(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
            if not wait_for(lambda: self.is_ok() and self.replicas_in_sync(), self.start_timeout):
                raise ClusterUnavailable(f"cluster not ok after {self.start_timeout}s: {self.describe()}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every node by its PID and remove the work directory (if this object made it)."""
        for node in self.nodes.values():
            node.stop(timeout=5)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- faults
    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` by PID (a crash: no goodbye to the cluster)."""
        self.nodes[port].kill()

    def pause(self, port: int, seconds: float) -> None:
        """Freeze the node (SIGSTOP) and let it go on after ``seconds``, without blocking."""
        self.nodes[port].pause(seconds)

    def restart(self, port: int) -> None:
        """Start the node again on its port (after :meth:`kill`), with its old nodes.conf."""
        node = self.nodes[port]
        if node.running:
            node.stop()
        node.start(timeout=self.start_timeout)

    def running_ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.running]

    # -- state
    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host, port=port, socket_timeout=2, socket_connect_timeout=2,
                           decode_responses=True)

    def _ask(self, port: int, *command: str) -> str:
        with self.client(port) as conn:
            return str(conn.execute_command(*command))

    def cluster_info(self, port: int) -> dict[str, str]:
        text = self._ask(port, "CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def nodes_view(self, port: int | None = None) -> list[ClusterNodeInfo]:
        """CLUSTER NODES as seen by ``port`` (default: the first running node)."""
        asked = port if port is not None else self.running_ports()[0]
        return _parse_nodes(self._ask(asked, "CLUSTER", "NODES"))

    def masters(self) -> list[int]:
        """Ports of the masters that own slots and are not failed, by port."""
        return sorted(n.port for n in self.nodes_view() if n.is_master and not n.failed and n.slot_count)

    def replicas(self) -> list[int]:
        return sorted(n.port for n in self.nodes_view() if not n.is_master and not n.failed)

    def topology_calls(self, *, reset: bool = False) -> dict[str, int]:
        """``CLUSTER SLOTS`` and ``COMMAND`` calls the running nodes served since their last ``CONFIG RESETSTAT``
        (keys ``"cluster|slots"``, ``"command"``); ``reset``: then reset their counters."""
        totals = {"cluster|slots": 0, "command": 0}
        for port in self.running_ports():
            with self.client(port) as conn:
                stats = conn.info("commandstats")
                if reset:
                    conn.config_resetstat()
            for name in totals:
                totals[name] += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        return totals

    def node_id(self, port: int) -> str:
        return self._ask(port, "CLUSTER", "MYID")

    def replica_of(self, master_port: int) -> int | None:
        """The port of a replica of the master on ``master_port``, as that master sees it (None: it has none)."""
        view = self.nodes_view(master_port)
        master_id = next((n.node_id for n in view if n.port == master_port), None)
        replicas = sorted(n.port for n in view if n.master_id == master_id and not n.failed)
        return replicas[0] if replicas else None

    def says_master(self, port: int, conn: Any = None) -> bool:
        """The node on ``port`` says, in its own CLUSTER NODES line, that it is a master serving slots (asked on
        ``conn`` if given, else on a connection of its own)."""
        try:
            if conn is None:
                text = self._ask(port, "CLUSTER", "NODES")
            else:
                text = str(conn.execute_command("CLUSTER", "NODES"))
            myself = next(n for n in _parse_nodes(text) if "myself" in n.flags)
        except (redis.RedisError, OSError, StopIteration):
            return False
        return myself.is_master and myself.slot_count > 0

    def wait_for_promotion(self, replica_port: int, timeout: float, *, since: float = 0.0,
                           interval: float = 0.01) -> float | None:
        """Wait until the replica on ``replica_port`` says it is a master (it won a failover election); return
        when that happened (:func:`time.time`), or None if it did not within ``timeout`` seconds.

        The time is the replica's own log line "Failover election won" (written just before it takes over the
        slots, in milliseconds) when one after ``since`` is found, so that the figure does not depend on how
        promptly this process polled; else the time the poll saw it."""
        deadline = time.monotonic() + timeout
        with self.client(replica_port) as conn:
            while not self.says_master(replica_port, conn):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(interval)
        seen = time.time()
        logged = self.election_won_at(replica_port, since)
        return logged if logged is not None and logged <= seen else seen

    def election_won_at(self, port: int, since: float = 0.0) -> float | None:
        """When the node on ``port`` last logged "Failover election won" after ``since`` (:func:`time.time`)."""
        try:
            lines = self.nodes[port].logfile.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            if "Failover election won" not in line:
                continue
            # "1234:S 05 Dec 2026 20:03:30.123 * Failover election won for epoch 7."
            fields = line.split()
            try:
                stamp = datetime.datetime.strptime(" ".join(fields[1:5]), "%d %b %Y %H:%M:%S.%f").timestamp()
            except (ValueError, IndexError):
                return None
            return stamp if stamp >= since else None
        return None

    def is_ok(self) -> bool:
        """Every running node says cluster_state:ok with every slot served, and agrees on the masters."""
        try:
            for port in self.running_ports():
                info = self.cluster_info(port)
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(HASH_SLOTS):
                    return False
            views = {tuple(sorted(n.port for n in self.nodes_view(p) if n.is_master and n.slot_count
                                  and not n.failed))
                     for p in self.running_ports()}
            return len(views) == 1
        except (redis.RedisError, OSError, IndexError):
            return False

    def replicas_in_sync(self) -> bool:
        """Every master has a replica, seen so by every running node, and each replica's link is up."""
        try:
            for port in self.running_ports():
                view = self.nodes_view(port)
                masters = {n.node_id for n in view if n.is_master and n.slot_count and not n.failed}
                served = {n.master_id for n in view if not n.is_master and not n.failed}
                if not masters or not masters <= served:
                    return False
            for port in self.replicas():
                with self.client(port) as conn:
                    if conn.info("replication").get("master_link_status") != "up":
                        return False
            return True
        except (redis.RedisError, OSError, IndexError):
            return False

    def wait_until_ok(self, timeout: float = 30.0) -> bool:
        return wait_for(self.is_ok, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return wait_for(predicate, timeout)

    def describe(self) -> str:
        parts = []
        for port, node in self.nodes.items():
            if not node.running:
                parts.append(f"{port}: down")
                continue
            try:
                parts.append(f"{port}: {self.cluster_info(port).get('cluster_state')}")
            except (redis.RedisError, OSError) as exc:
                parts.append(f"{port}: {exc}")
        return "; ".join(parts)

    # -- resharding
    def reshard(self, from_port: int, to_port: int, slots: int, timeout: float = 120.0) -> None:
        """Move ``slots`` slots (and their keys) from one master to another with redis-cli."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ClusterUnavailable("redis-cli is not installed")
        moved = subprocess.run(
            [cli, "--cluster", "reshard", f"{self.host}:{from_port}", "--cluster-from", self.node_id(from_port),
             "--cluster-to", self.node_id(to_port), "--cluster-slots", str(slots), "--cluster-yes",
             "--cluster-pipeline", "100"],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if moved.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster reshard failed:\n{moved.stdout[-2000:]}{moved.stderr}")

    def __repr__(self) -> str:
        return f"<RedisClusterServer ports={self.ports}>"


def _parse_nodes(text: str) -> list[ClusterNodeInfo]:
    """The lines of a CLUSTER NODES answer."""
    infos = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        slots = 0
        for part in fields[8:]:
            if part.startswith("["):
                continue  # a slot being migrated, counted at its owner
            low, _, high = part.partition("-")
            slots += int(high or low) - int(low) + 1
        infos.append(ClusterNodeInfo(
            node_id=fields[0], port=int(address.rsplit(":", 1)[1]), flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3], slot_count=slots,
        ))
    return infos


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return True
    return False
