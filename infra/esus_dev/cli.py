"""`esus`: run the local stack, mint dev tokens, rotate the PHI root key, re-encrypt old items."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

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


def cmd_token(args: argparse.Namespace) -> None:
    print(mint_token(args.tenant, args.scope, args.fhir_user, subject=args.subject,
                     lifetime_seconds=args.lifetime))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="esus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the local API with an embedded AWS stand-in")
    run.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    run.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    run.set_defaults(func=cmd_run)

    token = sub.add_parser("token", help="print a JWT the local stack accepts")
    token.add_argument("--tenant", required=True)
    token.add_argument("--scope", default="user/*.*")
    token.add_argument("--fhir-user", default=None)
    token.add_argument("--subject", default="dev-user")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds")
    token.set_defaults(func=cmd_token)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
