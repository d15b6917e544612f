"""`esus`: run the local stack, mint dev tokens, rotate the PHI root key, re-encrypt old items, check integrity,
remove orphaned objects and recover large transactions.

Exit codes: 0 success; 1 the command ran and found problems (verify, reencrypt, import failures);
2 it could not run (bad usage, no local stack, unreachable endpoint, credentials, missing data).
Foreseeable operator errors are turned into one line on stderr in one place (`explain`); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Literal

from esus import coldstart
from esus.security.auth import PATIENT_ID
from esus_dev.localstack import stackstate
from esus_dev.localstack.devkeys import dev_dir, mint_token

AIM_AWS = "aim the command elsewhere with --deployed (ESUS_* settings, AWS credentials) or --endpoint URL"
# Error codes AWS answers when the credentials themselves are wrong, and when they lack a permission.
BAD_CREDENTIALS = frozenset({
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "IncompleteSignature", "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
})
ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


class OperatorError(Exception):
    """A foreseeable mistake or condition the operator can fix: one line on stderr, exit 2."""


def _repo() -> Path:
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if (candidate / "template.yaml").exists():
            return candidate
    sys.exit("esus: run this inside the ESUS repository (no template.yaml found)")


def cmd_run(args: argparse.Namespace) -> None:
    from esus_dev.localstack.stack import LocalStack

    os.environ.setdefault("ESUS_ROOT_KEY_MAX_AGE_SECONDS", "5")
    stack = LocalStack(_repo())
    server = stack.serve(args.host, args.port)  # listen first: a taken port fails before anything starts
    try:
        stack.start(in_process_aws=True)
        port = server.server_port
        base = f"http://{args.host}:{port}/fhir"
        state = {"base_url": base, "port": port, "pid": os.getpid(), "aws_endpoint": stack.aws_endpoint,
                 **stack.physical_names()}
        state_file = stackstate.write_state(dev_dir(), port, state)
        token = mint_token("acme", "user/*.*", "Practitioner/dev", lifetime_seconds=12 * 3600)
        print(f"ESUS local API: {base}")
        print(f"AWS stand-in:   {state['aws_endpoint']} (moto, serialised)")
        print(f"State file:     {state_file} (removed when this stack stops)")
        print("Dev token (tenant acme, scope user/*.*, 12 h):")
        print(f"  export TOKEN={token}")
        print(f'  curl -H "Authorization: Bearer $TOKEN" {base}/metadata')
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it like Ctrl-C: the state file goes too
        try:
            with contextlib.suppress(KeyboardInterrupt):
                server.serve_forever()
        finally:
            stackstate.remove_state(state_file, state)
    finally:
        server.server_close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _target(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Settings, endpoint) of the running local stack, or of a deployment (ESUS_* env, --endpoint)."""
    from esus.settings import Settings

    args.local_stack = None
    if args.deployed or args.endpoint:
        return Settings(), args.endpoint
    state = stackstate.find_local_stack(dev_dir(), args.port, AIM_AWS)
    args.local_stack = state
    # The local stand-in accepts any credentials; a developer shell may have none configured.
    for name, value in (("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ACCESS_KEY_ID", "local"),
                        ("AWS_SECRET_ACCESS_KEY", "local")):
        os.environ.setdefault(name, value)
    settings = Settings(
        resources_table=state["ResourcesTable"], history_table=state["HistoryTable"],
        provenance_table=state["ProvenanceTable"], index_table=state["IndexTable"],
        root_key_secret_id=state["RootKeySecret"],
        # A stack started before the object bucket existed records none: the default name then fails clearly.
        **({"object_bucket": state["ObjectBucket"]} if "ObjectBucket" in state else {}),
    )
    return settings, state["aws_endpoint"]


def _client(service: Literal["dynamodb", "secretsmanager", "s3"], endpoint: str | None) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint) if endpoint else boto3.client(service)


def _services(settings: Any, endpoint: str | None) -> Any:
    from esus.container import build_services

    return build_services(settings, _client("dynamodb", endpoint), _client("secretsmanager", endpoint),
                          _client("s3", endpoint))


def cmd_rotate_key(args: argparse.Namespace) -> None:
    from esus.ops.rotation import rotate_root_key

    settings, endpoint = _target(args)
    version = rotate_root_key(_client("secretsmanager", endpoint), settings.root_key_secret_id)
    print(f"Root key version {version} is now current; older versions remain for decryption.")
    print("New writes use it once containers refresh the cached key; run `esus reencrypt` to migrate old items.")


def cmd_reencrypt(args: argparse.Namespace) -> None:
    from esus.ops.rotation import reencrypt_all

    settings, endpoint = _target(args)
    services = _services(settings, endpoint)
    report = reencrypt_all(services)
    print(f"Re-encrypted under key version {services.keyring.current_version()}: "
          f"{report.current_items} current, {report.history_items} history, "
          f"{report.provenance_items} provenance items.")
    if report.failed_keys:
        print(f"{len(report.failed_keys)} item(s) failed their integrity check and were left untouched:")
        print("\n".join(f"  {key}" for key in report.failed_keys))
        sys.exit(1)


def cmd_openapi(args: argparse.Namespace) -> None:
    from esus.http.openapi import openapi_document

    print(json.dumps(openapi_document(args.base_url), indent=2, sort_keys=True))


def cmd_token(args: argparse.Namespace) -> None:
    if args.patient is not None and not PATIENT_ID.match(args.patient):
        raise OperatorError("--patient takes a Patient id (letters, digits, '-', '.'; at most 64), not a reference")
    print(mint_token(args.tenant, args.scope, args.fhir_user, subject=args.subject,
                     lifetime_seconds=args.lifetime, patient=args.patient))


def cmd_verify(args: argparse.Namespace) -> None:
    from datetime import timedelta

    from esus.ops.verify import verify_all

    if args.min_age_minutes < 0:
        raise OperatorError("--min-age-minutes must be 0 or more")
    settings, endpoint = _target(args)
    report = verify_all(_services(settings, endpoint), tenant=args.tenant, repair_index=args.repair_index,
                        orphan_min_age=timedelta(minutes=args.min_age_minutes))
    if args.tenant is not None and args.tenant not in report.tenants:
        # Most likely a misspelt tenant: an "OK" for nothing checked would mislead.
        raise OperatorError(f"no data is stored for tenant {args.tenant!r}: nothing to check "
                            "(tenant names are matched exactly; run without --tenant to check every tenant)")
    for name in sorted(report.tenants):
        found = report.tenants[name]
        verdict = "OK" if found.ok else f"{len(found.problems)} problem(s)"
        print(f"Tenant {name}: {found.resources} resources, {found.versions} versions, "
              f"{found.provenances} Provenance, {found.index_items} index items "
              f"({found.stale_index_items} stale search items"
              + (f", {found.repaired_index_items} repaired" if args.repair_index else "")
              + f"), {found.objects} objects ({found.orphaned_objects} orphaned): {verdict}")
        print("\n".join(f"  {problem}" for problem in found.problems), end="\n" if found.problems else "")
    print(f"Checked {len(report.tenants)} tenant(s): {report.resources} resources, {report.versions} versions, "
          f"{report.provenances} Provenance, {report.index_items} index items and {report.objects} objects.")
    if report.orphaned_objects:
        print(f"{report.orphaned_objects} orphaned object(s) (bodies of writes that failed before their transaction; "
              "invisible and sealed): `esus cleanup-objects` removes them.")
    if report.ok:
        print("OK: every invariant holds.")
        return
    bad = sorted(name for name, found in report.tenants.items() if not found.ok)
    print(f"{len(report.problems)} problem(s) in {len(bad)} tenant(s): {', '.join(bad)}")
    sys.exit(1)


def cmd_cleanup_objects(args: argparse.Namespace) -> None:
    from datetime import timedelta

    from esus.ops.verify import cleanup_objects

    if args.min_age_minutes < 0:
        raise OperatorError("--min-age-minutes must be 0 or more")
    settings, endpoint = _target(args)
    report = cleanup_objects(_services(settings, endpoint), tenant=args.tenant,
                             min_age=timedelta(minutes=args.min_age_minutes), remove=not args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in sorted(report.tenants):
        found = report.tenants[name]
        count = found.orphaned_objects if args.dry_run else found.removed_objects
        print(f"Tenant {name}: {found.objects} objects, {verb} {count} orphaned")
    total = report.orphaned_objects if args.dry_run else sum(t.removed_objects for t in report.tenants.values())
    print(f"{len(report.tenants)} tenant(s), {report.objects} objects: {verb} {total} orphaned object(s) older "
          f"than {args.min_age_minutes} minutes.")


def cmd_recover_transactions(args: argparse.Namespace) -> None:
    """The sweeper (docs/TRANSACTIONS.md): completes every large transaction whose lease ended."""
    settings, endpoint = _target(args)
    report = _services(settings, endpoint).store.transactions.sweep(args.tenant)
    for line in report.transactions:
        print(f"  {line}")
    print(f"Recovered {report.rolled_forward + report.rolled_back} transaction(s): {report.rolled_forward} rolled "
          f"forward (committed), {report.rolled_back} rolled back; {report.live} in progress left alone.")


def cmd_import(args: argparse.Namespace) -> None:
    from esus_dev import importer

    sys.exit(importer.main(args, dev_dir()))


def explain(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a foreseeable operator error; None for anything else (a bug keeps its traceback)."""
    from botocore import exceptions as aws

    from esus_dev.localstack.stack import ServeError

    if isinstance(exc, OperatorError | stackstate.NoLocalStack | ServeError):
        return str(exc)
    if isinstance(exc, aws.HTTPClientError | aws.ConnectionError):
        where = exc.kwargs.get("endpoint_url") or "the AWS endpoint"
        if getattr(args, "local_stack", None):
            return (f"no local stack answers at {where} (its AWS stand-in stopped): {stackstate.START_HINT}, "
                    f"or {AIM_AWS}")
        return f"cannot reach {where}: check --endpoint, AWS_REGION and the network"
    if isinstance(exc, aws.NoCredentialsError | aws.PartialCredentialsError):
        return ("no AWS credentials found: configure them (AWS_PROFILE, `aws configure`, or AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY), or drop --deployed to use the local stack")
    if isinstance(exc, aws.NoRegionError):
        return "no AWS region configured: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)"
    if isinstance(exc, aws.ProfileNotFound | aws.TokenRetrievalError | aws.SSOError):
        return f"AWS credentials unavailable: {exc}"
    if isinstance(exc, aws.ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", "")).rstrip(".")
        if code in BAD_CREDENTIALS:
            return f"AWS rejected the credentials ({code}: {message}): check AWS_PROFILE / the access keys"
        if code in ACCESS_DENIED:
            return (f"AWS denied {exc.operation_name} ({code}): the credentials lack a permission this command "
                    f"needs: {message}")
        if code == "ResourceNotFoundException":
            return (f"{exc.operation_name}: {message}: check the table and secret names (ESUS_RESOURCES_TABLE, "
                    "ESUS_HISTORY_TABLE, ESUS_PROVENANCE_TABLE, ESUS_INDEX_TABLE, ESUS_ROOT_KEY_SECRET_ID), "
                    "the region and the account")
        if code == "NoSuchBucket":
            return (f"{exc.operation_name}: {message}: check the object bucket name (ESUS_OBJECT_BUCKET), the region "
                    "and the account")
        return f"AWS answered {exc.operation_name} with {code}: {message}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return None


def main(argv: list[str] | None = None) -> None:
    coldstart.resume()  # a tool, not a route function: in a Lambda image the collector must not stay paused
    parser = argparse.ArgumentParser(prog="esus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    token.add_argument("--patient", default=None,
                       help="Patient id of the SMART launch context (the `patient` claim patient/ scopes need)")
    token.set_defaults(func=cmd_token)

    for name, func, text in (
        ("rotate-key", cmd_rotate_key, "add a new PHI root-key version and make it current"),
        ("reencrypt", cmd_reencrypt, "re-encrypt items sealed under older root-key versions"),
        ("verify", cmd_verify, "check the integrity invariants across all tables and the object bucket"),
        ("cleanup-objects", cmd_cleanup_objects, "remove orphaned objects: bodies of writes that failed before "
                                                 "their transaction"),
        ("recover-transactions", cmd_recover_transactions,
         "complete large transactions whose lease ended (roll forward if committed, else back)"),
    ):
        command = sub.add_parser(name, help=text)
        if name == "recover-transactions":
            command.add_argument("--tenant", default=None, help="only this tenant's transactions")
        if name in ("verify", "cleanup-objects"):
            command.add_argument("--min-age-minutes", type=int, default=60,
                                 help="an object no item points to is an orphan once this old; a younger one may "
                                      "belong to a write still committing (default: 60)")
        if name == "cleanup-objects":
            command.add_argument("--tenant", default=None, help="only this tenant's objects")
            command.add_argument("--dry-run", action="store_true", help="count the orphans, remove nothing")
        if name == "verify":
            command.add_argument("--tenant", default=None, help="only this tenant's items")
            command.add_argument("--repair-index", action="store_true",
                                 help="write missing search index items (from each version's idx) and delete "
                                      "stale ones (of older versions or failed writes) instead of reporting them")
        command.add_argument("--deployed", action="store_true",
                             help="use ESUS_* environment settings and AWS credentials, not the local stack")
        command.add_argument("--endpoint", default=None, help="AWS endpoint URL (implies --deployed)")
        _port_option(command)
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
    load.add_argument("--atomic", action="store_true",
                      help="send each transaction Bundle as ONE transaction (all its entries or none)")
    _port_option(load)
    load.set_defaults(func=cmd_import)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        message = explain(exc, args)
        if message is None:
            raise
        print(f"esus {args.command}: {message}", file=sys.stderr)
        sys.exit(2)


def _port_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--port", type=int, default=None,
                         help="the local stack listening on this port, when several run (default: $ESUS_LOCAL_PORT, "
                              "else the one that answers)")


if __name__ == "__main__":
    main()
