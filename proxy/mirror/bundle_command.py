"""``wharf mirror export|import|inventory``: bundles for air gaps, on a Wharf's store (running or not).

    wharf mirror export LIST|--all|--pulled-since DAYS -o BUNDLE.tar [--compress none|gzip|zstd]
                        [--since OLD_BUNDLE | --since-index FILE]
    wharf mirror import BUNDLE…
    wharf mirror inventory -o FILE

Exit status: 0 done; 1 something was refused or left out (one line on stderr says what); 2 a bad
argument or config. The work itself is ``proxy.mirror.export`` and ``proxy.mirror.importer``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.errors import OCIError
from proxy.http import keys
from proxy.mirror import bundle
from proxy.mirror.bundle import BundleError
from proxy.mirror.commands import opened_wharf, run_command
from proxy.mirror.lists import MirrorListError, load_list


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A bad argument is one line on stderr (exit 2), not the usage text."""
    def error(message: str) -> None:
        parser.exit(2, f"{parser.prog}: {message} (see {parser.prog} --help)\n")
    parser.error = error  # type: ignore[method-assign]
    return parser


def _fail(message: str, status: int = 1) -> int:
    print(f"wharf: {message}", file=sys.stderr)
    return status


def add_parsers(actions, add_config) -> None:
    """Add the bundle commands to ``wharf mirror``."""
    export = _one_line_errors(actions.add_parser(
        "export", help="write what mirroring holds as one OCI-layout bundle (tar) for an air gap",
        description="Write an OCI image layout (a tar, optionally compressed) holding every manifest and blob "
                    "of the chosen images, each tag named by its full original name; skopeo reads it as "
                    "oci-archive:BUNDLE:NAME:TAG. Exit 1 when an image could not be exported (the rest is written)."))
    what = export.add_mutually_exclusive_group()
    what.add_argument("list", nargs="?", metavar="LIST", help="a mirror list file: what its last sync made visible")
    what.add_argument("--all", action="store_true",
                      help="every image every mirror list and import keeps (not content clients merely pulled "
                           "through the cache)")
    what.add_argument("--pulled-since", type=float, metavar="DAYS",
                      help="mirrored or imported images with a layer or config read within DAYS days")
    export.add_argument("-o", "--output", required=True, metavar="BUNDLE.tar", help="the bundle to write")
    export.add_argument("--compress", choices=bundle.COMPRESSIONS,
                        help="default: told by the name (.tar.gz, .tgz: gzip; .tar.zst: zstd), else none. Layers are "
                             "compressed already: zstd costs little; gzip runs on one core (tens of MB/s)")
    base = export.add_mutually_exclusive_group()
    base.add_argument("--since", metavar="OLD_BUNDLE",
                      help="a delta: leave out what the other side holds once it imported OLD_BUNDLE (a delta is "
                           "for wharf mirror import; other tools find there only what it carries whole)")
    base.add_argument("--since-index", metavar="FILE",
                      help="a delta: leave out what FILE (wharf mirror inventory there) says the other side holds")
    add_config(export)
    export.set_defaults(run=_export)

    imports = _one_line_errors(actions.add_parser(
        "import", help="import bundles (Wharf's, any OCI layout, docker save) into the store",
        description="Verify every digest, then make each image visible under its original name. Full or "
                    "delta bundles, plain, gzip or zstd; docker save tarballs. Running it again resumes an "
                    "interrupted import; importing a bundle twice changes nothing."))
    imports.add_argument("bundles", nargs="+", metavar="BUNDLE")
    add_config(imports)
    imports.set_defaults(run=_import)

    inventory = _one_line_errors(actions.add_parser(
        "inventory", help="write what this store holds for mirroring (for export --since-index on the other side)"))
    inventory.add_argument("-o", "--output", required=True, metavar="FILE", help="the inventory (JSON) to write")
    add_config(inventory)
    inventory.set_defaults(run=_inventory)


def _compression(args: argparse.Namespace) -> str:
    if args.compress:
        return args.compress
    name = args.output.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "gzip"
    if name.endswith((".tar.zst", ".tar.zstd")):
        return "zstd"
    return "none"


def _export(args: argparse.Namespace) -> int:
    chosen = [args.list is not None, args.all, args.pulled_since is not None]
    if sum(chosen) != 1:
        return _fail("mirror export: name what to export: a mirror list file, --all or --pulled-since DAYS", 2)
    if args.pulled_since is not None and args.pulled_since <= 0:
        return _fail("mirror export: --pulled-since takes a number of days above 0", 2)
    try:
        mirror_list = load_list(args.list) if args.list else None
        base_id, base = None, None
        if args.since:
            described = bundle.read_description(Path(args.since))
            base_id, base = described.id, set(described.inventory)
        elif args.since_index:
            base_id, base = bundle.read_inventory(Path(args.since_index))
    except MirrorListError as exc:
        return _fail(str(exc), 2)
    except BundleError as exc:
        return _fail(str(exc))

    async def body(config) -> int:
        from proxy.app import BLOBS
        from proxy.mirror import export

        async with opened_wharf(config) as app:
            records, blobs = app[keys.MIRROR_RECORDS], app[BLOBS]
            if mirror_list is not None:
                selection = export.select_list(records, mirror_list)
            elif args.all:
                selection = export.select_all(records)
            else:
                selection = export.select_pulled_since(records, blobs, args.pulled_since)
            try:
                report = await export.export_bundle(records, blobs, selection, Path(args.output),
                                                    _compression(args), base, base_id)
            except OSError as exc:
                return _fail(f"cannot write {args.output}: {exc.strerror or exc}")
        for problem in report.problems:
            print(f"wharf: {problem}", file=sys.stderr)
        delta = f", a delta against {report.base_id} ({report.left_out} left out)" if report.base_id else ""
        print(f"{report.path}: {report.images} image(s), {report.tags} tag(s), {report.written} manifest(s) and "
              f"blob(s) ({bundle.human_size(report.written_bytes)}){delta}; bundle {report.bundle_id}")
        return 1 if report.problems else 0

    return run_command(args, body)


def _import(args: argparse.Namespace) -> int:
    async def body(config) -> int:
        from proxy.mirror.importer import import_bundle

        status = 0
        async with opened_wharf(config) as app:
            for name in args.bundles:
                try:
                    report = await import_bundle(app, Path(name))
                except BundleError as exc:
                    status = _fail(str(exc))
                    continue
                except OCIError as exc:  # the store is full, …
                    status = _fail(f"{name}: {exc.message}")
                    continue
                print(report.summary())
        return status

    return run_command(args, body)


def _inventory(args: argparse.Namespace) -> int:
    async def body(config) -> int:
        async with opened_wharf(config) as app:
            records = app[keys.MIRROR_RECORDS]
            digests = set().union(*(image.content() for _, image in records.all_images()))
        inventory_id = "inventory-" + bundle.new_id()
        try:
            bundle.write_inventory(Path(args.output), inventory_id, digests)
        except OSError as exc:
            return _fail(f"cannot write {args.output}: {exc.strerror or exc}")
        print(f"{args.output}: {len(digests)} digest(s) this store holds for mirroring; inventory {inventory_id}")
        return 0

    return run_command(args, body)
