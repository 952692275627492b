"""A real DNS server for tests and benchmarks: a dnsmasq child on a loopback port.

Theory of operation
-------------------
:class:`Dnsmasq` starts ``dnsmasq --no-daemon`` listening on ``127.0.0.1`` and a free
port, authoritative for one domain (``--local``: a name it does not know is NXDOMAIN, not
forwarded anywhere: it has no upstream). Its records come from two files it owns:

* A/AAAA records from an ``--addn-hosts`` file, which :meth:`Dnsmasq.set_hosts` rewrites
  and signals with SIGHUP (dnsmasq re-reads it without restarting);
* SRV records from a configuration file, which dnsmasq reads only at start:
  :meth:`Dnsmasq.set_srv` rewrites it and restarts the child on the same port.

The child is ended by its pid only (:meth:`Dnsmasq.stop`), never by name.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from fabric.testing.cluster import free_port

__all__ = ["Dnsmasq", "dnsmasq_path"]


def dnsmasq_path() -> str | None:
    """The dnsmasq executable, or None when it is not installed."""
    return shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if Path(p).exists()), None)


class Dnsmasq:
    """A dnsmasq child serving ``domain`` on 127.0.0.1:``port``.

    Use as a context manager. ``hosts`` are ``(address, name)`` pairs, ``srv`` are
    ``(srv_name, target, port)`` triples.
    """

    def __init__(self, domain: str = "fabric.test", *, port: int | None = None) -> None:
        exe = dnsmasq_path()
        if exe is None:
            raise FileNotFoundError("dnsmasq is not installed (apt-get install dnsmasq)")
        self.exe = exe
        self.domain = domain
        self.address = "127.0.0.1"
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="fabric-dnsmasq-"))
        self.hosts_file = self._dir / "hosts"
        self.conf_file = self._dir / "dnsmasq.conf"
        self.log_file = self._dir / "dnsmasq.log"
        self.hosts_file.write_text("")
        self._srv: list[tuple[str, str, int]] = []
        self._write_conf()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Dnsmasq:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _write_conf(self) -> None:
        lines = [f"local=/{self.domain}/"]
        lines += [f"srv-host={name},{target},{port}" for name, target, port in self._srv]
        self.conf_file.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 5.0) -> None:
        """Start the child and wait until it answers on its port."""
        cmd = [self.exe, "--no-daemon", f"--port={self.port}",
               f"--listen-address={self.address}", "--bind-interfaces", "--no-resolv",
               "--no-hosts", f"--addn-hosts={self.hosts_file}", f"--conf-file={self.conf_file}",
               "--pid-file=", "--user=root", "--local-ttl=0", "--cache-size=0",
               f"--log-facility={self.log_file}"]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dnsmasq did not start: {self.log_file.read_text()[-500:]}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        # Any reply to a query (even an error) means the server is up.
        query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                 b"\x04ping\x00\x00\x01\x00\x01")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            try:
                s.sendto(query, (self.address, self.port))
                return bool(s.recv(512))
            except OSError:
                return False

    def stop(self) -> None:
        """End the child (by its pid) and wait for it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def set_hosts(self, records: Iterable[tuple[str, str]]) -> None:
        """Serve exactly these ``(address, name)`` A/AAAA records (SIGHUP, no restart)."""
        self.hosts_file.write_text("".join(f"{addr} {name}\n" for addr, name in records))
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def set_srv(self, records: Iterable[tuple[str, str, int]]) -> None:
        """Serve exactly these ``(srv_name, target, port)`` SRV records (restarts)."""
        self._srv = list(records)
        self._write_conf()
        if self._proc is not None:
            self.stop()
            self.start()
