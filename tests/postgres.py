"""A throwaway PostgreSQL server for the tests, started from Debian's ``postgresql`` package.

:class:`PostgresServer` runs ``initdb`` in a fresh temporary folder (as the ``postgres`` user when the
tests run as root: PostgreSQL refuses to run as root), starts the server on a free port of 127.0.0.1
with its socket in that folder, creates the database ``sweep``, and removes everything at :meth:`stop`.
Where the binaries or the user are missing, or the server does not start, it raises
:class:`PostgresUnavailableError` with the reason; ``.ci/run`` installs the package.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgresUnavailableError(RuntimeError):
    """No server can be started here; the message says why."""


def server_binaries() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    folders = sorted(
        (Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    for folder in reversed(folders):
        if (folder / "pg_ctl").exists() and (folder / "createdb").exists():
            return folder
    raise PostgresUnavailableError(
        "PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/*/bin/initdb): "
        "apt-get install postgresql"
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """A PostgreSQL server of its own, in a temporary folder; :attr:`url` is its database ``sweep``."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.runner: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="lightning-reg-postgres-"))
        if os.geteuid() == 0:  # the server runs as the package's user, which owns the folder
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.folder)
                raise PostgresUnavailableError("running as root, and there is no 'postgres' user") from None
            if shutil.which("runuser") is None:
                shutil.rmtree(self.folder)
                raise PostgresUnavailableError("running as root, and there is no runuser to switch user")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.runner = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.data = self.folder / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/sweep"
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "-N",
            )
            options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-o", options, "start"
            )
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "sweep")
        except PostgresUnavailableError:
            self.stop()
            raise

    def _run(self, program: str, *arguments: str) -> None:
        done = subprocess.run(
            [*self.runner, str(self.bin / program), *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            log = self.folder / "log"
            server_log = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailableError(
                f"{program} failed ({done.returncode}): {done.stderr[-2000:]}{done.stdout[-500:]}{server_log}"
            )

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self.runner,
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.folder, ignore_errors=True)
