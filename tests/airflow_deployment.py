"""Airflow as it is deployed, for tests/test_airflow_deployed.py: a fresh PostgreSQL database as the
metadata DB, LocalExecutor, and the three long-running processes Airflow 3 needs (`airflow
api-server`, which also serves the Execution API the tasks talk to; `airflow scheduler`; `airflow
dag-processor`), each started as users start them, from the command line, in its own process group.

Nothing here imports Airflow: every Airflow call is a subprocess with this deployment's environment,
so its settings never leak into the test process. The REST API (a JWT from the simple auth manager)
and psycopg2 on the metadata DB are the read side.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
SERVICES = ("api-server", "scheduler", "dag-processor")
PASSWORD = "tandem-test"  # the simple auth manager's admin, written into AIRFLOW_HOME before it starts


def postgres_error() -> str | None:
    """Why PostgreSQL cannot hold a metadata DB here (None when it can)."""
    try:
        import psycopg2
    except ImportError as e:
        return f"psycopg2 is not installed ({e}); install apache-airflow-providers-postgres"
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
    except psycopg2.OperationalError as e:
        return f"PostgreSQL is not reachable on {PG['host']}:{PG['port']} as {PG['user']}: {e}".strip()
    return None


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    conn.autocommit = True  # CREATE/DROP DATABASE refuse to run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database() -> str:
    name = f"tandem_airflow_{secrets.token_hex(4)}"
    _admin(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # FORCE: a killed process may leave a session


def query(database: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(dbname=database, connect_timeout=5, **PG) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """One Airflow deployment in `home` over the PostgreSQL database `database`."""

    def __init__(self, home: Path, dags: Path, database: str, extra_env: dict[str, str] | None = None):
        self.home, self.database = home, database
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self._token = ""
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TANDEM_"))}
        bindir = str(Path(sys.executable).parent)
        self.env = env | {
            "PATH": bindir + os.pathsep + env.get("PATH", ""),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}",
            # Tasks reach the metadata DB only through the API server's Execution API.
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # Every component signs or checks the same JWTs: one secret for all of them.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            # Lean on a small machine: few worker processes, one parser, no re-parsing during the run.
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "GX_ANALYTICS_ENABLED": "false",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.env |= extra_env or {}
        (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": PASSWORD}))

    # ------------------------------------------------------------------ command line
    def cli(self, *args: str, timeout: float = 300) -> str:
        """`airflow ARGS...` as a user types it; its output, or AssertionError with it."""
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = proc.stdout + proc.stderr
        if proc.returncode:
            raise AssertionError(f"`airflow {' '.join(args)}` exited {proc.returncode}:\n{output[-4000:]}")
        return output

    def start(self) -> None:
        """The three services, each in its own session (process group), output to HOME/<name>.log."""
        for name in SERVICES:
            args = [name, "--port", str(self.port), "--host", "127.0.0.1"] if name == "api-server" else [name]
            with open(self.home / f"{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(
                    [str(Path(sys.executable).with_name("airflow")), *args],
                    env=self.env,
                    cwd=self.home,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def stop(self) -> None:
        """SIGTERM each service's process group (the scheduler's task processes included), then SIGKILL."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may outlive its leader (task runners, gunicorn/uvicorn workers)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def dead(self) -> str | None:
        """The first service that exited, if any."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    # ------------------------------------------------------------------ REST API
    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        if not self._token:
            self._token = self._request("POST", "/auth/token", {"username": "admin", "password": PASSWORD})[
                "access_token"
            ]
        return self._request(method, path, body, {"Authorization": f"Bearer {self._token}"})

    def _request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"} | (headers or {})
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def wait_for_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if died := self.dead():
                raise AssertionError(died)
            try:
                self._request("GET", "/api/v2/monitor/health")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        raise AssertionError(f"the API server did not answer on {self.url} within {timeout:.0f} s")

    # ------------------------------------------------------------------ diagnostics
    def logs(self, tail: int = 4000) -> str:
        """The services' output and every task log, each cut to its last `tail` characters."""
        parts = []
        for path in [self.home / f"{name}.log" for name in SERVICES] + sorted((self.home / "logs").rglob("*.log")):
            if path.is_file():
                text = path.read_text(errors="replace")
                parts.append(f"===== {path.relative_to(self.home)}\n{text[-tail:]}")
        return "\n".join(parts)
