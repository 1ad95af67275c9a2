"""Several real ``wharf serve`` processes behind nginx, as users run replicas: on one shared volume
(a Deployment), or each on a disk of its own (a StatefulSet: ``own_disks``).

``start_replicas`` writes ONE config (one ``storage.root``, one Redis, one PostgreSQL database) and
starts ``count`` processes of it, each told its own port by ``WHARF_LISTEN`` (the config's
environment override), one after the other so that only one of them creates the database schema.
``start_nginx`` puts nginx (Debian's) in front, round-robin, retrying a request on the next replica
when one refuses the connection, as a load balancer of a Service does. Children die with the test
process; ``Replicas.stop`` stops them all.

With ``own_disks`` each replica also gets its own ``storage.root`` and advertises its own address
(``WHARF_STORAGE__ROOT``, ``WHARF_CLUSTER__ADVERTISE_URL``); they share a cluster secret file.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.servers import ChildProcess, ServerError, _die_with_parent, free_port, require_binary
from support.wharf_serve import START_TIMEOUT, WharfProcess, _healthy, wharf_argv, wharf_env, write_config

NGINX_CONFIG = """\
worker_processes 1;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    upstream wharf {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://wharf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


@dataclass
class NginxProcess(ChildProcess):
    process: subprocess.Popen
    log_path: Path
    url: str


def start_nginx(workdir: Path, backends: list[str]) -> NginxProcess:
    """nginx on a free port, round-robin over ``backends`` (``host:port``), unbuffered (blobs stream)."""
    binary = require_binary("nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server {backend} max_fails=1 fail_timeout=2s;" for backend in backends)
    config = workdir / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(workdir=workdir, servers=servers, port=port))
    log_path = workdir / "nginx.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([binary, "-p", str(workdir), "-c", str(config), "-g", "daemon off;"],
                                   cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)
    nginx = NginxProcess(process, log_path, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(nginx.url, None):
        if process.poll() is not None or time.monotonic() > deadline:
            nginx.stop()
            raise ServerError(f"nginx did not start:\n{nginx.log_tail()}\n{(workdir / 'error.log').read_text()}")
        time.sleep(0.05)
    return nginx


@dataclass
class Replicas:
    """The running replicas, the nginx in front (``url``), and the shared store's root."""

    wharfs: list[WharfProcess]
    nginx: NginxProcess
    root: Path  # the shared volume's root; with own disks, the first replica's
    config_path: Path
    killed: list[int] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)  # each replica's storage.root

    @property
    def url(self) -> str:
        return self.nginx.url

    def metric(self, index: int, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples matching ``labels`` on replica ``index``'s /metrics."""
        with urllib.request.urlopen(self.wharfs[index].url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            sample, _, value = line.rpartition(" ")
            if all(f'{key}="{wanted}"' in sample for key, wanted in labels.items()):
                total += float(value)
        return total

    def cluster_metric(self, name: str, **labels: str) -> float:
        """``metric`` summed over every replica still running."""
        return sum(self.metric(i, name, **labels) for i in range(len(self.wharfs)) if i not in self.killed)

    def secret(self) -> bytes:
        """The cluster secret the replicas on disks of their own share."""
        return (self.config_path.parent / "cluster.secret").read_bytes().strip()

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index``: no clean-up runs, its locks go with it."""
        self.wharfs[index].process.send_signal(signal.SIGKILL)
        self.wharfs[index].process.wait()
        self.killed.append(index)

    def fill_leader(self, digest: str) -> int | None:
        """The replica holding the flock of ``digest``'s fill (read from ``/proc/locks``), or None."""
        algorithm, hex_part = digest.split(":")
        try:
            inode = os.stat(self.root / "tmp" / f"fill-{algorithm}-{hex_part}.lock").st_ino
        except FileNotFoundError:
            return None
        holders = set()
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                holders.add(int(fields[4]))
        for index, wharf in enumerate(self.wharfs):
            if wharf.process.pid in holders and index not in self.killed:
                return index
        return None

    def temp_files(self) -> list[str]:
        return sorted(os.listdir(self.root / "tmp"))

    def stop(self) -> None:
        self.nginx.stop()
        for wharf in self.wharfs:
            wharf.stop()


def start_wharf_replica(workdir: Path, config_path: Path, port: int,
                        env: dict[str, str] | None = None) -> WharfProcess:
    """``wharf serve --config`` of the shared config, listening on ``port`` (``WHARF_LISTEN``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "wharf.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(wharf_argv("serve", "--config", str(config_path)), cwd=workdir,
                                   env=wharf_env({"WHARF_LISTEN": f"127.0.0.1:{port}", **(env or {})}),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)
    wharf = WharfProcess(process, log_path, f"http://127.0.0.1:{port}", config_path)
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(wharf.url, None):
        if process.poll() is not None or time.monotonic() > deadline:
            wharf.stop()
            raise ServerError(f"replica on {port} did not start:\n{wharf.output()}")
        time.sleep(0.1)
    return wharf


def start_replicas(workdir: Path, upstreams: dict[str, str], redis_url: str, database_url: str,
                   count: int = 3, own_disks: bool = False, extra_env: dict[int, dict[str, str]] | None = None,
                   **overrides) -> Replicas:
    """``count`` replicas of one config (``upstreams`` by name, shared root or ``own_disks``, Redis,
    PostgreSQL) behind nginx; ``extra_env`` adds variables to some replicas (by index)."""
    root = workdir / "shared-volume"
    config = {"listen": "127.0.0.1:0", "storage": {"root": str(root)},
              "upstreams": [{"name": name, "url": url, "tag_ttl": 300} for name, url in upstreams.items()],
              "default_upstream": None, "log": {"access_log": False},
              "redis": {"url": redis_url, "retry_seconds": 0.5}, "database": {"url": database_url}}
    if own_disks:
        workdir.mkdir(parents=True, exist_ok=True)
        secret = workdir / "cluster.secret"
        secret.write_text(secrets.token_urlsafe(32))
        secret.chmod(0o600)
        config["cluster"] = {"secret_file": str(secret), "lease_seconds": 3}
    config.update(overrides)
    config_path = write_config(workdir, config)
    wharfs: list[WharfProcess] = []
    roots: list[Path] = []
    try:
        for index in range(count):
            port = free_port()
            env = None
            roots.append(root)
            if own_disks:
                roots[-1] = workdir / f"replica{index}" / "disk"
                env = {"WHARF_STORAGE__ROOT": str(roots[-1]),
                       "WHARF_CLUSTER__ADVERTISE_URL": f"http://127.0.0.1:{port}"}
            env = {**(env or {}), **(extra_env or {}).get(index, {})}
            wharfs.append(start_wharf_replica(workdir / f"replica{index}", config_path, port, env))
        nginx = start_nginx(workdir / "nginx", [w.url.split("://", 1)[1] for w in wharfs])
    except BaseException:
        for wharf in wharfs:
            wharf.stop()
        raise
    return Replicas(wharfs, nginx, roots[0], config_path, roots=roots)
