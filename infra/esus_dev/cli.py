"""`esus`: run the local stack, mint dev tokens, rotate the PHI root key, re-encrypt old items."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from esus_dev.devkeys import dev_dir, mint_token

STATE_FILE = "local-stack.json"


def _repo() -> Path:
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if (candidate / "template.yaml").exists():
            return candidate
    sys.exit("esus: run this inside the ESUS repository (no template.yaml found)")


def cmd_run(args: argparse.Namespace) -> None:
    from esus_dev.localstack import LocalStack

    os.environ.setdefault("ESUS_ROOT_KEY_MAX_AGE_SECONDS", "5")
    stack = LocalStack(_repo())
    stack.start()
    server = stack.serve(args.host, args.port)
    base = f"http://{args.host}:{server.server_port}/fhir"
    state = {"base_url": base, "aws_endpoint": os.environ["AWS_ENDPOINT_URL"], **stack.physical_names()}
    (dev_dir() / STATE_FILE).write_text(json.dumps(state, indent=2))
    token = mint_token("acme", "user/*.*", "Practitioner/dev", lifetime_seconds=12 * 3600)
    print(f"ESUS local API: {base}")
    print(f"AWS stand-in:   {state['aws_endpoint']} (moto, serialised)")
    print("Dev token (tenant acme, scope user/*.*, 12 h):")
    print(f"  export TOKEN={token}")
    print(f'  curl -H "Authorization: Bearer $TOKEN" {base}/metadata')
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def _target(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Settings, endpoint) of the running local stack, or of a deployment (ESUS_* env, --endpoint)."""
    from esus.settings import Settings

    state_path = dev_dir() / STATE_FILE
    if args.deployed or not state_path.exists():
        return Settings(), args.endpoint
    state = json.loads(state_path.read_text())
    # The local stand-in accepts any credentials; a developer shell may have none configured.
    for name, value in (("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ACCESS_KEY_ID", "local"),
                        ("AWS_SECRET_ACCESS_KEY", "local")):
        os.environ.setdefault(name, value)
    settings = Settings(
        resources_table=state["ResourcesTable"], history_table=state["HistoryTable"],
        provenance_table=state["ProvenanceTable"], index_table=state["IndexTable"],
        root_key_secret_id=state["RootKeySecret"],
    )
    return settings, state["aws_endpoint"]


def _client(service: Literal["dynamodb", "secretsmanager"], endpoint: str | None) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint) if endpoint else boto3.client(service)


def cmd_rotate_key(args: argparse.Namespace) -> None:
    from esus.rotation import rotate_root_key

    settings, endpoint = _target(args)
    version = rotate_root_key(_client("secretsmanager", endpoint), settings.root_key_secret_id)
    print(f"Root key version {version} is now current; older versions remain for decryption.")
    print("New writes use it once containers refresh the cached key; run `esus reencrypt` to migrate old items.")


def cmd_reencrypt(args: argparse.Namespace) -> None:
    from esus.container import build_services
    from esus.rotation import reencrypt_all

    settings, endpoint = _target(args)
    services = build_services(settings, _client("dynamodb", endpoint), _client("secretsmanager", endpoint))
    report = reencrypt_all(services)
    print(f"Re-encrypted under key version {services.keyring.current_version()}: "
          f"{report.current_items} current, {report.history_items} history, "
          f"{report.provenance_items} provenance items.")
    if report.failed_keys:
        print(f"{len(report.failed_keys)} item(s) failed their integrity check and were left untouched:")
        print("\n".join(f"  {key}" for key in report.failed_keys))
        sys.exit(1)


def cmd_openapi(args: argparse.Namespace) -> None:
    from esus.openapi import openapi_document

    print(json.dumps(openapi_document(args.base_url), indent=2, sort_keys=True))


def cmd_token(args: argparse.Namespace) -> None:
    print(mint_token(args.tenant, args.scope, args.fhir_user, subject=args.subject,
                     lifetime_seconds=args.lifetime))


def cmd_verify(args: argparse.Namespace) -> None:
    from esus.container import build_services
    from esus.verify import verify_all

    settings, endpoint = _target(args)
    services = build_services(settings, _client("dynamodb", endpoint), _client("secretsmanager", endpoint))
    report = verify_all(services, tenant=args.tenant)
    print(f"Checked {report.resources} resources, {report.versions} versions, {report.provenances} Provenance "
          f"and {report.index_items} index items.")
    if report.ok:
        print("OK: every invariant holds.")
        return
    print(f"{len(report.problems)} problem(s):")
    print("\n".join(f"  {problem}" for problem in report.problems))
    sys.exit(1)


def cmd_import(args: argparse.Namespace) -> None:
    from esus_dev import importer

    sys.exit(importer.main(args, dev_dir()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="esus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the local API with an embedded AWS stand-in")
    run.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    run.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    run.set_defaults(func=cmd_run)

    openapi = sub.add_parser("openapi", help="print the OpenAPI description (docs/openapi.json)")
    openapi.add_argument("--base-url", default="https://api.esus.health/fhir")
    openapi.set_defaults(func=cmd_openapi)

    token = sub.add_parser("token", help="print a JWT the local stack accepts")
    token.add_argument("--tenant", required=True)
    token.add_argument("--scope", default="user/*.*")
    token.add_argument("--fhir-user", default=None)
    token.add_argument("--subject", default="dev-user")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds")
    token.set_defaults(func=cmd_token)

    for name, func, text in (
        ("rotate-key", cmd_rotate_key, "add a new PHI root-key version and make it current"),
        ("reencrypt", cmd_reencrypt, "re-encrypt items sealed under older root-key versions"),
        ("verify", cmd_verify, "check the integrity invariants across all tables"),
    ):
        command = sub.add_parser(name, help=text)
        if name == "verify":
            command.add_argument("--tenant", default=None, help="only this tenant's items")
        command.add_argument("--deployed", action="store_true",
                             help="use ESUS_* environment settings and AWS credentials, not the local stack")
        command.add_argument("--endpoint", default=None, help="AWS endpoint URL (with --deployed)")
        command.set_defaults(func=func)

    load = sub.add_parser("import", help="load FHIR Bundles / NDJSON into a local or deployed API (resumable)")
    load.add_argument("paths", nargs="+", metavar="PATH",
                      help="FHIR Bundle / resource .json files, .ndjson files, or folders of them")
    load.add_argument("--base-url", default=None, help="FHIR base URL (default: the running local stack)")
    load.add_argument("--token", default=None, help="bearer token (default: $ESUS_TOKEN; for the local "
                      "stack a system/*.cruds dev token for --tenant is minted)")
    load.add_argument("--tenant", default="acme", help="tenant of a minted local token (default: acme)")
    load.add_argument("--concurrency", type=int, default=4, help="parallel requests (default: 4)")
    load.add_argument("--retries", type=int, default=6,
                      help="retries per request on 429/502/503/504 and connection errors (default: 6)")
    load.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: 60)")
    load.add_argument("--state-file", default=None,
                      help="progress record for resuming (default: .esus/import-state.json)")
    load.add_argument("--no-resume", dest="resume", action="store_false",
                      help="send every entry, even those an earlier run finished")
    load.add_argument("--progress", action="store_true", help="show progress even when stderr is not a TTY")
    load.add_argument("--json", action="store_true", help="print the summary as JSON")
    load.set_defaults(func=cmd_import)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
