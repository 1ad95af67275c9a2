"""Write containerd's certs.d/<registry>/hosts.toml for every upstream on this node, then wait.

The files are those ``wharf client-config containerd`` prints (proxy.clientconfig), for the
upstreams in upstreams.json beside this script and Wharf at NODE_WHARF_HOST (host:port) or, when
that is empty, the Service address Kubernetes injects (<SERVICE>_SERVICE_HOST / _SERVICE_PORT).
Each file is replaced atomically; on SIGTERM the files written are removed when CLEANUP is "true".
"""

import json
import os
import signal
import sys
from pathlib import Path

from proxy.clientconfig import client_files
from proxy.config import config_from_dict

CERTS_D = "/etc/containerd/certs.d/"
TARGET = Path(os.environ.get("HOSTS_DIR", "/host/certs.d"))  # the node's certs.d, mounted


def wharf_host() -> str:
    host = os.environ.get("NODE_WHARF_HOST", "")
    if host:
        return host
    service = os.environ["SERVICE_ENV"]
    address = os.environ[f"{service}_SERVICE_HOST"]
    port = os.environ[f"{service}_SERVICE_PORT"]
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def main() -> int:
    upstreams = json.loads(Path(__file__).with_name("upstreams.json").read_text())
    url = f"{os.environ['WHARF_SCHEME']}://{wharf_host()}"
    config = config_from_dict({"upstreams": upstreams, "public_url": url})
    written = []
    for file in client_files(config, "containerd"):
        path = TARGET / file.path.removeprefix(CERTS_D)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(file.text)
        partial.replace(path)
        written.append(path)
        print(f"wrote {file.path} -> {url}", flush=True)

    def stop(signum, frame):
        if os.environ.get("CLEANUP") == "true":
            for path in written:
                path.unlink(missing_ok=True)
                print(f"removed {path}", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
