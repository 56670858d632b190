"""A throwaway three-node RabbitMQ cluster on this machine, for failover tests.

Each node is a ``rabbitmq-server`` of its own: its own node name
(``tavrida-<base_port>-c1@localhost`` ...), AMQP port, Erlang distribution port, data,
log and config files under one temporary folder, an empty plugins file and
its own ``RABBITMQ_CONF_ENV_FILE`` (so it never reads the machine's
``/etc/rabbitmq`` files, which pin the listener to 5672). The nodes share an
Erlang cookie through a ``HOME`` folder of their own. The machine's own node
is never touched: nodes are stopped by their pid (SIGTERM, then SIGKILL) and
the CLI only ever talks to the cluster's node names.

Ports (all inside ``base..base+99``):

* AMQP: ``base+1 .. base+3``
* Erlang distribution: ``base+11 .. base+13``
* ``rabbitmqctl``'s own distribution ports: ``base+40 .. base+79``

Test runs share the machine (a developer's run beside CI's), so each takes a
``base_port`` of its own: :meth:`RabbitCluster.on_free_ports` leases one (an
exclusive ``flock`` on ``$TMPDIR/tavrida-cluster-<base_port>.lock``, held
until ``stop()`` or the end of the process) whose 100 ports are free, and
the node names, folder and ports all follow from it. By hand the default is
29600, which a leasing run never takes.

Used by ``tests/integration/cluster/conftest.py`` and by hand::

    scripts/rabbitmq-cluster start     # prints the URLs; state in $TMPDIR
    scripts/rabbitmq-cluster status
    scripts/rabbitmq-cluster stop

The cluster's state (pids, folder) is kept in
``$TMPDIR/tavrida-cluster-<base_port>/state.json``, so ``stop`` works from
another process and a cluster left behind by a crashed run is stopped by the
next ``start``; one whose owning process still runs, or one started by hand,
is left alone and ``start`` says so.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Dict, List, Optional

try:
    import fcntl
except ImportError:  # not POSIX: no test cluster anyway (rabbitmq-server is not there)
    fcntl = None  # type: ignore[assignment]

RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"
DEFAULT_BASE_PORT = 29600
#: Where :meth:`RabbitCluster.on_free_ports` looks for a base port: below Linux's
#: ephemeral range (32768 up), so no client socket of the machine takes ours, and
#: above 25600-25699, where unit tests count on nothing listening.
LEASE_PORTS = (25700, 32700)
PORT_SPAN = 100
NODE_COUNT = 3
#: Generous: three nodes boot at once on a loaded 2-core machine.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """The cluster could not be started, joined or stopped; says which node and why."""


def _bin(tool: str) -> str:
    """The tool itself, not the /usr/sbin wrapper that ``su``s to the rabbitmq user."""
    path = os.path.join(RABBITMQ_BIN, tool)
    return path if os.path.exists(path) else (shutil.which(tool) or tool)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _ports_free(base_port: int) -> bool:
    """True when nothing listens on (or holds) any of ``base_port .. base_port+99``.

    Binds each (with ``SO_REUSEADDR``, as the Erlang VM does, so a port left
    in TIME_WAIT counts as free and one a server holds does not).
    """
    for port in range(base_port, base_port + PORT_SPAN):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


class PortLease:
    """``base_port .. base_port+99`` held for one process, against other test runs.

    An exclusive, non-blocking ``flock`` on a file named after the base port,
    kept open until :meth:`release` (or the end of the process: the kernel
    drops the lock of a process that died, so a crashed run holds nothing).
    """

    def __init__(self, base_port: int, handle: IO[str]) -> None:
        self.base_port = base_port
        self._handle: Optional[IO[str]] = handle

    @classmethod
    def take(cls, base_port: int) -> Optional["PortLease"]:
        """The lease of ``base_port``, or None when another process holds it."""
        path = os.path.join(tempfile.gettempdir(), f"tavrida-cluster-{base_port}.lock")
        handle = open(path, "a", encoding="ascii")  # held until release()
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return cls(base_port, handle)

    def release(self) -> None:
        """Let another run take these ports; safe to call twice."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_is_node(pid: int, nodename: str) -> bool:
    """True when ``pid`` is the Erlang VM of ``nodename`` (never another node's).

    The VM gets its name from ``RABBITMQ_NODENAME`` in its environment, not
    from its command line, so that is what is checked.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            env = handle.read().split(b"\0")
    except OSError:
        return False
    return f"RABBITMQ_NODENAME={nodename}".encode() in env


class Node:
    """One node of the cluster: its name, ports, folders and process."""

    def __init__(self, root: str, index: int, base_port: int, home: str) -> None:
        self.index = index
        # The base port in the name: two clusters of the machine never share a node name.
        self.name = f"tavrida-{base_port}-c{index}"
        self.nodename = f"{self.name}@localhost"
        self.port = base_port + index
        self.dist_port = base_port + 10 + index
        self.dir = os.path.join(root, self.name)
        self.home = home
        self.base_port = base_port
        self.pid_file = os.path.join(self.dir, "node.pid")
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> Dict[str, str]:
        """The environment of this node's server and of the CLI talking to it."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": self.home,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.base_port + 40),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.base_port + 79),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.dir, "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.dir, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
            "RABBITMQ_PID_FILE": self.pid_file,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def write_files(self) -> None:
        os.makedirs(os.path.join(self.dir, "mnesia"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "log"), exist_ok=True)
        files = {
            # Read instead of /etc/rabbitmq/rabbitmq-env.conf: nothing to add.
            "rabbitmq-env.conf": "# tavrida test cluster node: no machine settings\n",
            "rabbitmq.conf": (
                f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                "loopback_users = none\n"
                "log.file.level = info\n"
                "log.console = false\n"
                "disk_free_limit.absolute = 50MB\n"
            ),
            "advanced.config": "[].\n",
            "enabled_plugins": "[].\n",
        }
        for name, text in files.items():
            with open(os.path.join(self.dir, name), "w", encoding="utf-8") as handle:
                handle.write(text)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the node's log, for error messages (the folder is deleted)."""
        text = ""
        for name in (f"{self.nodename}.log", "console.log"):
            try:
                with open(os.path.join(self.dir, "log", name), encoding="utf-8",
                          errors="replace") as handle:
                    text = "".join(handle.readlines()[-lines:])
            except OSError:
                continue
            if text:
                break
        return text

    def pid(self) -> Optional[int]:
        """The pid of this node's Erlang VM, from its pid file, if it runs."""
        try:
            with open(self.pid_file, encoding="ascii") as handle:
                pid = int(handle.read().strip() or "0")
        except (OSError, ValueError):
            return None
        return pid if pid and _pid_alive(pid) and _pid_is_node(pid, self.nodename) else None

    def spawn(self) -> None:
        """Start the server in its own session (a Ctrl-C of the tests does not reach it)."""
        with open(os.path.join(self.dir, "log", "console.log"), "ab") as log:
            self.process = subprocess.Popen(
                [_bin("rabbitmq-server")], env=self.env(), cwd=self.dir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def ctl(self, *args: str, timeout: float = CLI_TIMEOUT,
            check: bool = True) -> subprocess.CompletedProcess:
        """``rabbitmqctl -n <this node> args``; raises :class:`ClusterError` on failure."""
        cmd = [_bin("rabbitmqctl"), "-n", self.nodename, *args]
        try:
            result = subprocess.run(cmd, env=self.env(), capture_output=True, text=True,
                                    timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self.nodename}: rabbitmqctl {' '.join(args)} "
                               f"took over {timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise ClusterError(f"{self.nodename}: rabbitmqctl {' '.join(args)} failed "
                               f"({result.returncode}): {(result.stderr or result.stdout).strip()}")
        return result

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the node runs, its app is started and its AMQP port answers."""
        deadline = time.monotonic() + timeout
        while self.pid() is None:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(f"{self.nodename} exited ({self.process.returncode}) "
                                   f"while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.nodename} wrote no pid file in {timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)
        left = max(deadline - time.monotonic(), 5.0)
        self.ctl("await_startup", "--timeout", str(int(left)), timeout=left + 30)
        while not _port_open(self.port):
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.nodename}: port {self.port} closed after startup")
            time.sleep(0.2)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the node: SIGTERM (a clean stop), SIGKILL after ``timeout``."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.reap()

    def kill(self) -> int:
        """SIGKILL this node's VM, and only it; returns the pid killed."""
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"{self.nodename} is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.reap()
        return pid

    def reap(self) -> None:
        """Wait for the wrapper script and end what is left of its session."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self.process = None


class RabbitCluster:
    """Three RabbitMQ nodes joined in one cluster, on ports ``base_port+1..3``.

    ``start()`` boots and joins them; ``kill(i)`` SIGKILLs node ``i`` (1-3);
    ``restart(i)`` boots it again (it rejoins on its own); ``stop()`` stops
    every node and deletes the folder. Also a context manager. Tests make
    theirs with :meth:`on_free_ports`, so two runs at once do not meet.
    """

    def __init__(self, base_port: int = DEFAULT_BASE_PORT, root: Optional[str] = None) -> None:
        self.base_port = base_port
        self._lease: Optional[PortLease] = None
        self.root = root or os.path.join(tempfile.gettempdir(), f"tavrida-cluster-{base_port}")
        self.home = os.path.join(self.root, "home")
        self.nodes = [Node(self.root, i, base_port, self.home) for i in range(1, NODE_COUNT + 1)]
        self.start_seconds: Optional[float] = None
        self.stop_seconds: Optional[float] = None

    @classmethod
    def on_free_ports(cls, attempts: int = 40) -> "RabbitCluster":
        """A cluster (not started) on a base port leased for this process alone.

        Tries base ports of :data:`LEASE_PORTS` in a random order (never
        :data:`DEFAULT_BASE_PORT`, the one used by hand); takes the first whose
        lease is free, whose folder holds no cluster of a live process or of a
        person, and whose ports are free once a crashed run's nodes are stopped.
        """
        bases = [base for base in range(LEASE_PORTS[0], LEASE_PORTS[1], PORT_SPAN)
                 if base != DEFAULT_BASE_PORT]
        random.shuffle(bases)
        for base in bases[:attempts]:
            lease = PortLease.take(base)
            if lease is None:
                continue
            cluster = cls(base)
            try:
                cluster._clear_leftovers()
            except ClusterError:
                lease.release()
                continue
            cluster._lease = lease
            return cluster
        raise ClusterError(f"no free base port in {attempts} tries of "
                           f"{LEASE_PORTS[0]}-{LEASE_PORTS[1]}: other runs or servers hold them")

    @property
    def urls(self) -> List[str]:
        """AMQP URL of every node, node 1 first."""
        return [node.url for node in self.nodes]

    @property
    def failover_url(self) -> str:
        """kombu's failover form: ``amqp://...c1;amqp://...c2;amqp://...c3``."""
        return ";".join(self.urls)

    def node(self, index: int) -> Node:
        """Node ``index`` (1-based, as in its name)."""
        return self.nodes[index - 1]

    def _state_file(self) -> str:
        return os.path.join(self.root, "state.json")

    def _load_state(self) -> Dict[str, Any]:
        try:
            with open(self._state_file(), encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, **changes: Any) -> None:
        """Record pids and who owns the cluster: the process running it, or a person."""
        state = self._load_state()
        state.setdefault("owner", os.getpid())
        state.update({"root": self.root, "base_port": self.base_port,
                      "nodes": {n.nodename: n.pid() for n in self.nodes}}, **changes)
        if os.path.isdir(self.root):
            with open(self._state_file(), "w", encoding="utf-8") as handle:
                json.dump(state, handle)

    def _clear_leftovers(self) -> None:
        """Stop nodes of a crashed earlier run (ours: same folder and node names).

        A cluster whose owner still runs (another test run) or that was
        started by hand is left alone: starting again is an error.
        """
        if os.path.isdir(self.root):
            state = self._load_state()
            owner = state.get("owner")
            if state.get("by_hand"):
                raise ClusterError(f"a cluster started by hand runs in {self.root}: "
                                   f"scripts/rabbitmq-cluster stop, or another base_port")
            if isinstance(owner, int) and owner != os.getpid() and _pid_alive(owner):
                raise ClusterError(f"process {owner} runs a cluster in {self.root}: "
                                   f"wait for it, or pick another base_port")
            for node in self.nodes:
                node.terminate(timeout=10)
            shutil.rmtree(self.root, ignore_errors=True)
        if not _ports_free(self.base_port):
            raise ClusterError(f"ports {self.base_port}-{self.base_port + PORT_SPAN - 1} are "
                               f"not all free (something else holds one); pick another base_port")

    def start(self, timeout: float = START_TIMEOUT) -> "RabbitCluster":
        """Boot the three nodes, join 2 and 3 to 1, wait until all run."""
        began = time.monotonic()
        self._clear_leftovers()
        os.makedirs(self.home)
        self._save_state(owner=os.getpid())
        cookie = os.path.join(self.home, ".erlang.cookie")
        with open(cookie, "w", encoding="ascii") as handle:
            handle.write("TAVRIDATESTCLUSTER" + os.urandom(8).hex().upper())
        os.chmod(cookie, 0o400)
        atexit.register(self.stop)
        try:
            for node in self.nodes:
                node.write_files()
                node.spawn()
            with ThreadPoolExecutor(NODE_COUNT) as pool:
                for future in [pool.submit(n.wait_ready, timeout) for n in self.nodes]:
                    future.result()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.nodename)
                node.ctl("start_app")
                node.wait_ready(timeout)
            self.wait_ready(timeout)
            self._save_state()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def running_nodes(self, via: int = 1) -> List[str]:
        """Node names the cluster reports as running, asked of node ``via``."""
        out = self.node(via).ctl("cluster_status", "--formatter", "json").stdout
        return sorted(json.loads(out).get("running_nodes", []))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until every node runs and each sees all of them running."""
        deadline = time.monotonic() + timeout
        want = sorted(n.nodename for n in self.nodes)
        for node in self.nodes:
            node.wait_ready(max(deadline - time.monotonic(), 5.0))
        while True:
            seen = [self.running_nodes(n.index) for n in self.nodes]
            if all(s == want for s in seen):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster did not form in {timeout:.0f} s: {seen}")
            time.sleep(0.5)

    def kill(self, index: int) -> int:
        """SIGKILL node ``index`` (1-3): a crash, no clean shutdown. Returns its pid."""
        pid = self.node(index).kill()
        self._save_state()
        return pid

    def restart(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Boot node ``index`` again on its data; it rejoins the cluster."""
        node = self.node(index)
        if node.pid() is not None:
            node.terminate()
        node.spawn()
        node.wait_ready(timeout)
        self.wait_ready(timeout)
        self._save_state()

    def stop(self) -> None:
        """Stop every node (by pid) and delete the folder; safe to call twice."""
        began = time.monotonic()
        with ThreadPoolExecutor(NODE_COUNT) as pool:
            list(pool.map(lambda n: n.terminate(), self.nodes))
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self.stop_seconds = time.monotonic() - began

    def status(self) -> Dict[str, Any]:
        """Each node's pid, port and whether its AMQP port answers."""
        return {n.nodename: {"pid": n.pid(), "port": n.port, "url": n.url,
                             "amqp_open": _port_open(n.port)} for n in self.nodes}

    def __enter__(self) -> "RabbitCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Optional[List[str]] = None) -> int:
    """``start`` | ``stop`` | ``status`` | ``kill N`` | ``restart N`` of the test cluster."""
    parser = argparse.ArgumentParser(prog="rabbitmq-cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "kill", "restart"])
    parser.add_argument("node", nargs="?", type=int, choices=range(1, NODE_COUNT + 1),
                        help="node number, for kill and restart")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help=f"ports used are base+1..base+79 (default {DEFAULT_BASE_PORT})")
    args = parser.parse_args(argv)
    cluster = RabbitCluster(args.base_port)
    try:
        if args.command == "start":
            cluster.start()
            atexit.unregister(cluster.stop)  # it outlives this command
            cluster._save_state(owner=None, by_hand=True)
            print(f"started in {cluster.start_seconds:.1f} s; folder {cluster.root}")
            print(f"failover URL: {cluster.failover_url}")
        elif args.command == "stop":
            cluster.stop()
            print(f"stopped in {cluster.stop_seconds:.1f} s")
        elif args.command == "status":
            print(json.dumps(cluster.status(), indent=2))
        elif args.node is None:
            parser.error(f"{args.command} needs a node number")
        elif args.command == "kill":
            print(f"killed {cluster.node(args.node).nodename} (pid {cluster.kill(args.node)})")
        else:
            cluster.restart(args.node)
            print(f"{cluster.node(args.node).nodename} restarted")
    except ClusterError as exc:
        print(f"rabbitmq-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
