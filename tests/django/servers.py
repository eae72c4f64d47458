"""Real servers for the integration tests: redis-server, PostgreSQL, a delaying TCP
proxy in front of either, the example project served by ``manage.py
runserver``, gunicorn (gthread) or waitress, and the other example projects
behind gunicorn (``ProjectServer``).

Everything binds 127.0.0.1 on a free port, every wait is bounded, and every
process started here is stopped by whoever started it (see ``stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import http.client
import http.server
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PROJECT_DIR = Path(__file__).resolve().parent.parent / "django_project"
KINDS = ("runserver", "gunicorn", "waitress")
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 15.0

_ProjectServer = TypeVar("_ProjectServer", bound="ProjectServer")


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"gave up after {timeout}s waiting for {what}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def run_clients(
    client: Callable[[range], None], requests: int, threads: int, timeout: float
) -> None:
    """Requests 0 to *requests* - 1 from *threads* client threads at once:
    ``client(range(i, requests, threads))`` in the i-th. Each thread is waited
    for at most *timeout* seconds; one still running fails the caller's test."""
    clients = [
        threading.Thread(target=client, args=(range(i, requests, threads),))
        for i in range(threads)
    ]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in clients)


class RedisServer:
    """A private redis-server on 127.0.0.1 and a free port (no persistence).

    Also the ``redis_server`` fixture of ``tests/flask``. Stopped by its user
    with ``stop``; stopped here if it does not start.
    """

    def __init__(self) -> None:
        binary = redis_server_binary() or "redis-server"
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--protected-mode", "yes"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.admin = redis.Redis(port=self.port, socket_timeout=REQUEST_TIMEOUT)
        try:
            wait_until(self._pings, START_TIMEOUT, "redis-server")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _pings(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            return bool(self.admin.ping())
        except Exception:
            return False

    def connections_received(self) -> int:
        return int(self.admin.info("stats")["total_connections_received"])

    def connected_clients(self) -> int:
        """Clients connected now, not counting the admin connection."""
        return int(self.admin.info("clients")["connected_clients"]) - 1

    def stop(self) -> None:
        self.admin.close()
        stop(self.process)


def postgres_bin_dir() -> Path | None:
    """The directory of ``postgres`` and ``initdb``: from PATH (Debian links
    neither there), else the newest ``/usr/lib/postgresql/<major>/bin``."""
    candidates = []
    found = shutil.which("postgres")
    if found:
        candidates.append(Path(found).resolve().parent)
    majors = glob.glob("/usr/lib/postgresql/*/bin")
    majors.sort(key=lambda d: [int(p) for p in re.findall(r"\d+", d)], reverse=True)
    candidates += map(Path, majors)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("postgres", "initdb")):
            return directory
    return None


def postgres_missing() -> str | None:
    """Why `PostgresServer` cannot start here, or None."""
    if postgres_bin_dir() is None:
        return "needs PostgreSQL's postgres and initdb (Debian package postgresql)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "as root, needs a postgres OS user (Debian package postgresql)"
        if shutil.which("runuser") is None:
            return "as root, needs runuser (Debian package util-linux)"
    return None


class PostgresServer:
    """A private PostgreSQL cluster: ``initdb`` into a temporary directory, then
    ``postgres`` on 127.0.0.1 and a free port (TCP only, trust authentication,
    superuser ``postgres``, fsync off). PostgreSQL refuses to run as root, so
    as root both run as the ``postgres`` OS user (``runuser -u postgres --``).

    ``admin`` is an autocommit psycopg connection to the ``postgres`` database.
    Stopped by its user with ``stop`` (a fast shutdown); stopped here if it
    does not start.
    """

    def __init__(self, max_connections: int = 300) -> None:
        import psycopg

        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no postgres and initdb (Debian package postgresql)")
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="loopshare-postgres-"))
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.admin: Any = None
        as_postgres: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")  # KeyError: no such user
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            as_postgres = ["runuser", "-u", "postgres", "--"]
        try:
            initdb = subprocess.run(
                [
                    *as_postgres,
                    str(bin_dir / "initdb"),
                    *("-D", str(self.datadir), "-U", "postgres", "--auth=trust"),
                    *("--encoding=UTF8", "--no-locale", "--no-sync"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
                check=False,
            )
            if initdb.returncode != 0:
                output = initdb.stdout.decode(errors="replace")[-3000:]
                raise RuntimeError(f"initdb exited with {initdb.returncode}:\n{output}")
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        *as_postgres,
                        str(bin_dir / "postgres"),
                        *("-D", str(self.datadir), "-p", str(self.port)),
                        *("-h", "127.0.0.1", "-k", ""),  # no Unix socket
                        *("-c", f"max_connections={max_connections}"),
                        *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                        *("-c", "full_page_writes=off"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

            def connects() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"postgres exited with {self.process.returncode}:\n"
                        + self.log()[-3000:]
                    )
                try:
                    self.admin = psycopg.connect(
                        self.dsn("postgres"), autocommit=True, connect_timeout=5
                    )
                except psycopg.OperationalError:
                    return False
                return True

            wait_until(connects, START_TIMEOUT, "postgres")
        except BaseException:
            self.stop()
            raise

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str) -> None:
        self.admin.execute(f'CREATE DATABASE "{name}"')

    def client_connections(self, database: str) -> int:
        """Client connections open to *database* now, not counting ``admin``."""
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            [database],
        ).fetchone()
        return int(row[0])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.close()
        if self.process is not None and self.process.poll() is None:
            # SIGINT to the postmaster is a fast shutdown (clients are cut off);
            # runuser would pass on only a SIGTERM, which waits for them.
            try:
                pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        shutil.rmtree(self.workdir, ignore_errors=True)


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 and a free port (``port``) that forwards to
    ``upstream_host:upstream_port`` and hands the client every chunk the
    upstream sends *delay* seconds after it arrived — each reply of Redis or
    PostgreSQL comes that much later, as over a network. What the client sends
    is forwarded at once. Chunks keep their order and their delays do not add
    up: latency, not bandwidth. An upstream's end of stream is passed on after
    the delay too; a client's at once.

    Runs an event loop of its own in a daemon thread (no asgiref involved).
    Stopped by its user with ``stop`` or by leaving its ``with`` block: the
    open connections are cut, and every wait is bounded. ``connections``
    counts the client connections accepted so far.
    """

    def __init__(
        self,
        upstream_port: int,
        delay: float = 0.03,
        upstream_host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"delaying-proxy-{upstream_port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self.stop()
            raise TimeoutError("the delaying proxy did not start")
        if self._error is not None:
            self._thread.join(timeout=START_TIMEOUT)
            raise self._error

    def __enter__(self) -> DelayingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = self._loop
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in self._handlers:
                task.cancel()
            if self._handlers:
                loop.run_until_complete(asyncio.wait(self._handlers, timeout=5))
            loop.close()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self.connections += 1
        loop = asyncio.get_running_loop()
        upstream_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                *self.upstream
            )
            replies: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def requests() -> None:
                assert upstream_writer is not None
                while data := await client_reader.read(65536):
                    upstream_writer.write(data)
                    await upstream_writer.drain()

            async def read_replies() -> None:
                while data := await upstream_reader.read(65536):
                    replies.put_nowait((loop.time() + self.delay, data))
                replies.put_nowait((loop.time() + self.delay, b""))

            async def deliver_replies() -> None:
                while True:
                    due, data = await replies.get()
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                    if not data:
                        return
                    client_writer.write(data)
                    await client_writer.drain()

            pumps = [
                loop.create_task(pump())
                for pump in (requests, read_replies, deliver_replies)
            ]
            # Done when the client hangs up or the upstream's replies are all out.
            await asyncio.wait(
                [pumps[0], pumps[2]], return_when=asyncio.FIRST_COMPLETED
            )
        except OSError:
            pass  # the upstream refused: the client sees its connection closed
        finally:
            for pump in pumps:
                pump.cancel()
            if pumps:
                await asyncio.wait(pumps)  # and their exceptions are retrieved:
                for pump in pumps:
                    if not pump.cancelled():
                        pump.exception()
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
            self._handlers.discard(handler)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed already
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)


def server_command(
    kind: str,
    port: int,
    app: str = "loopshare_example.wsgi:application",
    threads: int = 4,
) -> list[str]:
    """The command serving *app* (``module:name``; runserver serves the
    settings' ``WSGI_APPLICATION``) on *port* with *threads* request threads."""
    python = sys.executable
    address = f"127.0.0.1:{port}"
    if kind == "runserver":
        return [python, "manage.py", "runserver", "--noreload", address]
    if kind == "gunicorn":
        command = [python, "-m", "gunicorn", "--worker-class", "gthread"]
        command += ["--workers", "1", "--threads", str(threads), "--bind", address]
        version = importlib.metadata.version("gunicorn")
        if tuple(int(p) for p in version.split(".")[:2]) >= (25, 1):
            # Else every server opens $HOME/.gunicorn/gunicorn.ctl.
            command.append("--no-control-socket")
        return [*command, app]
    if kind == "waitress":
        return [
            *(python, "-m", "waitress", f"--listen={address}", f"--threads={threads}"),
            app,
        ]
    raise ValueError(kind)


class ProjectServer:
    """An example project of ``tests/django_project`` (*app*, ``module:name``;
    *settings*, its settings module) behind gunicorn gthread, 1 worker,
    *threads* request threads, with ``LOOPSHARE_ADAPTER`` from *adapter* and
    *env* on top of this process's environment. Its log goes to a file in a
    temporary directory of its own (prefix *workdir_prefix*).

    Started once ``/ping/`` answers ``pong`` (*label* names it in what goes
    wrong); stopped here if it does not, else by its user with ``stop`` or by
    leaving its ``with`` block. ``get`` gives up after *request_timeout*
    seconds with ``TimeoutError``.
    """

    def __init__(
        self,
        app: str,
        settings: str,
        *,
        adapter: bool,
        threads: int,
        label: str,
        env: dict[str, str] | None = None,
        workdir_prefix: str = "loopshare-project-",
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.mode = "adapter" if adapter else "stock"
        self.label = label
        self.request_timeout = request_timeout
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
        self.log_path = self.workdir / "gunicorn.log"
        process_env = dict(
            os.environ,
            **(env or {}),
            DJANGO_SETTINGS_MODULE=settings,
            LOOPSHARE_ADAPTER="1" if adapter else "0",
            PYTHONPATH=os.pathsep.join(
                [str(PROJECT_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            PYTHONUNBUFFERED="1",
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                server_command("gunicorn", self.port, app, threads),
                cwd=PROJECT_DIR,
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._answers, START_TIMEOUT, f"{self.label} to answer")
        except BaseException:
            self.stop()
            raise

    def __enter__(self: _ProjectServer) -> _ProjectServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.label} exited:\n{self.log()[-3000:]}")
        try:
            return self.get("/ping/") == (200, b"pong")
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        """One request on a fresh connection; (status, body). A request not
        answered within *request_timeout* raises ``TimeoutError``."""
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=self.request_timeout
        )
        try:
            connection.request("GET", path, headers={"Connection": "close"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class DjangoServer:
    """The example project behind a real server, with its own redis-server."""

    kind: str
    adapter: bool
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp()))

    def __post_init__(self) -> None:
        self.redis = RedisServer()
        self.port = free_port()
        self.env = dict(
            os.environ,
            LOOPSHARE_ADAPTER="1" if self.adapter else "0",
            LOOPSHARE_PROBES="1",
            LOOPSHARE_DB=str(self.workdir / "db.sqlite3"),
            LOOPSHARE_FILES=str(self.workdir),
            REDIS_URL=self.redis.url,
            DJANGO_SETTINGS_MODULE="loopshare_example.settings",
            PYTHONPATH=os.pathsep.join(
                [str(PROJECT_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            PYTHONUNBUFFERED="1",
        )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
            cwd=PROJECT_DIR,
            env=self.env,
            check=True,
            timeout=START_TIMEOUT,
        )
        self.log_path = self.workdir / f"{self.kind}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            server_command(self.kind, self.port),
            cwd=PROJECT_DIR,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._answers, START_TIMEOUT, f"{self.kind} to answer")
        except BaseException:
            self.stop()
            raise

    @property
    def label(self) -> str:
        return f"{self.kind}/{'adapter' if self.adapter else 'stock'}"

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.label} exited:\n{self.log()[-3000:]}")
        try:
            return self.get("/sync/")[0] == 200
        except OSError:
            return False

    def get(
        self, path: str, probe_id: str | None = None, method: str = "GET"
    ) -> tuple[int, bytes]:
        """One request on a fresh connection; (status, body)."""
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
        )
        headers = {"Connection": "close"}
        if probe_id is not None:
            headers["X-Probe"] = probe_id
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def events(self, probe_id: str, until: str = "request_finished") -> list[Any]:
        """The probe's events, once *until* is among them (bounded wait)."""
        found: list[Any] = []

        def arrived() -> bool:
            found[:] = json.loads(self.get(f"/probe/{probe_id}/")[1])["events"]
            return any(event["where"] == until for event in found)

        wait_until(arrived, REQUEST_TIMEOUT, f"{until} of probe {probe_id}")
        return found

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tracebacks(self) -> int:
        return self.log().count("Traceback (most recent call last)")

    def stop(self) -> None:
        stop(self.process)
        self._log.close()
        self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class RedisFigures:
    """What requests to a Redis view did to Redis and to the server."""

    label: str
    requests: int
    ok: int
    failed: int
    connections_opened: int
    connections_left_open: int
    server_tracebacks: int

    @property
    def per_request(self) -> float:
        return self.connections_opened / max(self.requests, 1)

    def line(self) -> str:
        return (
            f"{self.label:<44} ok={self.ok:>2}/{self.requests:<2} "
            f"redis connections opened={self.connections_opened:>3} "
            f"({self.per_request:.2f}/request) "
            f"left open={self.connections_left_open:>2} "
            f"server tracebacks={self.server_tracebacks}"
        )


_probes = itertools.count()


def measure_redis(
    server: DjangoServer,
    path: str = "/redis/",
    requests: int = 20,
    clients: int = 1,
) -> RedisFigures:
    """*requests* GETs of *path* and Redis's counters around them.

    With one client, each request is sent once the previous one has finished,
    ``request_finished`` included (which runs after the body was sent). With
    several, *clients* threads send requests at once, overlapping.
    """
    opened_before = server.redis.connections_received()
    open_before = server.redis.connected_clients()
    tracebacks_before = server.tracebacks()
    statuses: list[int] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        for _ in range(count):
            probe_id = f"redis{next(_probes)}"
            try:
                status = server.get(path, probe_id)[0]
                if clients == 1:
                    server.events(probe_id)  # wait for request_finished
            except (OSError, TimeoutError):
                status = 0
            with lock:
                statuses.append(status)

    threads = [
        threading.Thread(target=client, args=(requests // clients,))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT * requests)

    # Let the last requests' request_finished run (bounded).
    def left_open() -> int:
        return max(server.redis.connected_clients() - open_before, 0)

    deadline = time.monotonic() + 5
    while left_open() and time.monotonic() < deadline:
        time.sleep(0.1)
    ok = statuses.count(200)
    mode = "one at a time" if clients == 1 else f"{clients} clients at once"
    return RedisFigures(
        label=f"{server.label} {path} {mode}",
        requests=len(statuses),
        ok=ok,
        failed=len(statuses) - ok,
        connections_opened=server.redis.connections_received() - opened_before,
        connections_left_open=left_open(),
        server_tracebacks=server.tracebacks() - tracebacks_before,
    )


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """``GET /echo/<text>`` -> ``<text>``, over HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection ends after this (bounded)
    # Headers and body go out in two writes: without TCP_NODELAY the body waits
    # for the client's delayed ACK (~40 ms a reply on Linux).
    disable_nagle_algorithm = True
    server: EchoServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.open += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server.open -= 1

    def do_GET(self) -> None:
        if self.path.startswith("/echo/"):
            status, body = 200, self.path[len("/echo/") :].encode()
        else:
            status, body = 404, b"not found"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP/1.1 server on 127.0.0.1 and a free port, serving in a
    daemon thread; counts the connections it accepted and those open now."""

    daemon_threads = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.open = 0
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="loopshare-echo-server",
            daemon=True,
        )
        self.thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.accepted += 1
        super().process_request(request, client_address)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=REQUEST_TIMEOUT)
