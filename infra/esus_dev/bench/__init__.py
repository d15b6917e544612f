"""`make bench`: what one ESUS request costs, measured in-process against the local stack.

    python -m esus_dev.bench [--iterations N] [--cold-repeats R] [--write docs/BENCH.md]

Everything runs on this machine: the local stack (template.yaml routes, the real authorizer and route
functions) on an embedded moto server, driven through LocalStack.handle without an HTTP socket.

1. DynamoDB round trips per interaction, counted with botocore events on boto3's default session (every
   client the product builds comes from it), plus Secrets Manager / KMS calls on warm requests.
2. Warm handler time per interaction (median, p95) and its ratio to the raw boto3 calls the handler
   made: after each iteration the tables are recreated and the iteration's DynamoDB calls are replayed,
   in order, with a plain client on the same moto endpoint under a replay tenant, so every read and
   conditional write meets the same state as the handler's did.
3. Cold init per function in a fresh subprocess: import + first request, as a ratio to a bare handler
   that imports only boto3 and aws_lambda_powertools and makes one GetItem.
4. Crypto throughput: field encryption/decryption, blind-index tokens, and the PHI codec's cost per
   resource next to plain json.dumps/loads.
5. The patient compartment: `$everything` for one Synthea patient (~100 resources) and a compartment
   search, every page: DynamoDB calls and handler time per page.

moto on loopback is not DynamoDB: absolute milliseconds only describe this machine; round-trip counts
and the ratios measured within one run are what carry over.

One module per job: `scenario` (the interactions and their requests), `gateway` (the local stack in-process),
`recorder` (AWS calls via botocore events), `warm`, `compartment`, `cold` and `crypto` (the phases), `machine`,
`report` (the rows) and `render` (markdown); `main` runs them in order.

Top-level imports in this package are stdlib only: `python -m esus_dev.bench --cold-child` is the cold-start
child process, whose import timing must not be flattered by modules the parent already loaded.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# The baseline every function's cold start is compared with (a bare boto3 + Powertools resolver).
BARE_CODE_DIR = Path(__file__).resolve().parent / "bare_function"
