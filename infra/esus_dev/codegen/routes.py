"""The route table: one row per Lambda function, with its routes, its handler folder and the AWS actions it may
use. This is the one place to read or change them.

template.yaml's per-function resources (the function with its IAM policy and API events, its log group and its
alarm) are generated from this table: after an edit run `make template` (python -m esus_dev.codegen.template_gen).
tests/infra check that template.yaml is current, and that each row's actions are exactly the AWS calls its
handler makes (test_moto_stack.py records them at runtime), so a missing or a superfluous grant fails there.

Everything else in template.yaml (parameters, Globals, tables, keys, API, the other alarms, outputs) is written
by hand in template.yaml itself. An environment variable every function needs goes into its Globals; one only
some functions need goes into `env` below, e.g. "ESUS_SOMETHING": "!Ref SomeParameter".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Api:
    """An API Gateway route served by the function (a SAM `Api` event)."""

    method: str
    path: str
    public: bool = False  # True: no bearer token needed (the authorizer is not called)
    event: str = ""  # the SAM event's name; default: the function's name


@dataclass(frozen=True)
class Grant:
    """One IAM statement on this stack's DynamoDB tables or its object bucket."""

    sid: str
    actions: str  # space-separated IAM actions
    # Space-separated targets: a logical id (a table, or a bucket for bucket actions) is its Arn; `Bucket/*` is
    # every object in that bucket (object actions such as s3:GetObject).
    on: str
    why: str = ""  # written above the statement in template.yaml

    @property
    def services(self) -> set[str]:
        return {action.split(":", 1)[0] for action in self.actions.split()}


@dataclass(frozen=True)
class KeyUse:
    """The PHI root key (secretsmanager:GetSecretValue on RootKeySecret) and the stack's KMS key, which each role
    may use only through DynamoDB and Secrets Manager (kms:ViaService), and through S3 when it has a grant on the
    object bucket (SSE-KMS), never directly."""

    kms_actions: str


DECRYPT = KeyUse("kms:Decrypt kms:DescribeKey")
ENCRYPT = KeyUse("kms:Decrypt kms:Encrypt kms:GenerateDataKey kms:DescribeKey")


@dataclass(frozen=True)
class Function:
    name: str  # "Create" -> resources CreateFunction, CreateLogs and CreateFunctionAlarm
    folder: str  # functions/<folder>/app.py, function handler()
    description: str
    routes: tuple[Api, ...] = ()
    grants: tuple[Grant, ...] = ()
    keys: KeyUse | None = None
    env: dict[str, str] = field(default_factory=dict)  # besides Globals; values: a plain string or "!Ref Name"
    alarm_on_errors: bool = True  # False: the alarm watches throttles only
    timeout: int | None = None  # seconds, when not the Globals' default
    memory: int | None = None  # MB, when not the Globals' default (the CPU share grows with it)

    @property
    def logical_id(self) -> str:
        return f"{self.name}Function"

    @property
    def service(self) -> str:  # POWERTOOLS_SERVICE_NAME, the dimension of the service's own metrics
        return "esus-" + self.folder.replace("_", "-")


ALL_TABLES = "ResourcesTable HistoryTable ProvenanceTable IndexTable"
WRITE_NEW_VERSION = Grant(
    "WriteNewVersion", "dynamodb:PutItem", ALL_TABLES,
    "One TransactWriteItems: Puts of the version, history, Provenance, change-log and index items.")
WRITE_INDEX_BESIDE = Grant(
    "WriteIndexBeside", "dynamodb:BatchWriteItem", "IndexTable",
    "Search index items that do not fit in the version's transaction are written beside it (docs/SEARCH.md).")
READ_CURRENT = Grant("ReadCurrent", "dynamodb:GetItem", "ResourcesTable")
CONDITIONAL_SEARCH = (
    Grant("SearchIndex", "dynamodb:Query", "IndexTable",
          "The conditional search: index keys, then the matching current versions."),
    Grant("ReadCurrent", "dynamodb:GetItem dynamodb:BatchGetItem", "ResourcesTable"),
)
READ_CHANGE_LOG = (
    Grant("ReadChangeLog", "dynamodb:Query", "IndexTable"),
    Grant("ReadVersions", "dynamodb:BatchGetItem", "HistoryTable"),
)
# Versions whose sealed body is in the object bucket (too large for an item, or a Binary): any route that decodes
# a version may read one; any route that writes one writes its object first.
READ_OBJECTS = Grant("ReadLargeBodies", "s3:GetObject", "ObjectBucket/*",
                     "Sealed bodies of versions too large for an item, and of every Binary (the item holds the "
                     "pointer and digest).")
WRITE_OBJECTS = Grant("WriteLargeBodies", "s3:PutObject", "ObjectBucket/*",
                      "A version's sealed body when too large for an item (and every Binary): written once, before "
                      "the version's transaction.")

# Large transactions (docs/TRANSACTIONS.md). A reader that meets a lock or a pending item reads the
# transaction's record (and, once it committed, the pending version); it never writes.
READ_TRANSACTION_RECORD = Grant(
    "ReadTransactionRecord", "dynamodb:GetItem", "IndexTable",
    "Large transactions: an item locked or marked by one is resolved through its record (docs/TRANSACTIONS.md).")
# A writer reads current items as readers do: one locked by a committed transaction is its pending version.
READ_PENDING_VERSION = Grant(
    "ReadPendingVersion", "dynamodb:GetItem", "HistoryTable",
    "A current item locked by a committed large transaction: the version is its pending history item.")
# A writer that meets a lock settles the transaction: rolls it forward (committed) or back (aborted, or
# pending past its lease), the same steps the sweeper takes.
SETTLE_TRANSACTIONS = (
    Grant("SettleTransactionRecord", "dynamodb:GetItem dynamodb:UpdateItem dynamodb:DeleteItem dynamodb:BatchWriteItem",
          "IndexTable",
          "Large transactions: a writer that meets a lock settles its transaction (docs/TRANSACTIONS.md): the record, "
          "guards, change-log and Provenance index items."),
    Grant("SettleTransactionItems", "dynamodb:UpdateItem dynamodb:DeleteItem", "ResourcesTable",
          "Locks released, placeholders of a rolled-back transaction removed."),
    Grant("SettleTransactionVersions", "dynamodb:BatchGetItem dynamodb:DeleteItem dynamodb:BatchWriteItem",
          "HistoryTable", "Pending versions read, rolled forward (marker removed) or deleted."),
    Grant("SettleTransactionProvenance", "dynamodb:BatchGetItem dynamodb:BatchWriteItem", "ProvenanceTable",
          "Pending Provenance read, rolled forward or deleted."),
)


READ_PENDING_CANDIDATES = Grant(
    "ReadPendingVersions", "dynamodb:BatchGetItem", "HistoryTable",
    "Candidates locked by a committed transaction: their versions are its pending history items.")


FUNCTIONS: tuple[Function, ...] = (
    # API Gateway's TOKEN authorizer. It reports every rejected token as a function error (API Gateway's
    # "Unauthorized" contract), so its Errors count attacks, not faults: its alarm watches throttles only, and its
    # real failures surface as API 5xx (AUTHORIZER_FAILURE).
    Function("Authorizer", "authorizer",
             "Verifies bearer JWTs (RS256/ES256) and passes tenant, scope and fhirUser to the routes",
             env={"ESUS_JWT_ISSUER": "!Ref JwtIssuer", "ESUS_JWT_AUDIENCE": "!Ref JwtAudience",
                  "ESUS_JWKS_URL": "!Ref JwksUrl", "ESUS_JWKS_CACHE_SECONDS": "!Ref JwksCacheSeconds"},
             alarm_on_errors=False),
    Function("Metadata", "metadata", "GET /fhir/metadata (CapabilityStatement, no authentication)",
             routes=(Api("GET", "/fhir/metadata", public=True),),
             env={"ESUS_SMART_AUTHORIZATION_ENDPOINT": "!Ref SmartAuthorizationEndpoint",
                  "ESUS_SMART_TOKEN_ENDPOINT": "!Ref SmartTokenEndpoint"}),
    Function("OpenApi", "openapi", "GET /fhir/openapi.json (OpenAPI description, no authentication)",
             routes=(Api("GET", "/fhir/openapi.json", public=True),)),
    Function("Create", "create", "POST /fhir/{type}",
             routes=(Api("POST", "/fhir/{type}"),), keys=ENCRYPT, grants=(
                 Grant("WriteNewVersion", "dynamodb:PutItem", ALL_TABLES,
                       "One TransactWriteItems of Puts: version, history, Provenance, change-log and index items "
                       "(and the If-None-Exist guard item)."),
                 Grant("ConditionalCreateIndex", "dynamodb:GetItem dynamodb:Query", "IndexTable",
                       "Conditional create (If-None-Exist): the guard item and the search's index keys, then the "
                       "matches."),
                 Grant("ConditionalCreateMatches", "dynamodb:GetItem dynamodb:BatchGetItem", "ResourcesTable"),
                 Grant("ProvenanceTargets", "dynamodb:BatchGetItem", "ProvenanceTable",
                       "POST /Provenance: every target must exist (current versions above, or Provenance records)."),
                 WRITE_INDEX_BESIDE,
                 WRITE_OBJECTS,
                 READ_OBJECTS,
                 READ_PENDING_VERSION,
                 *SETTLE_TRANSACTIONS,
             )),
    Function("Read", "read", "GET /fhir/{type}/{id}",
             routes=(Api("GET", "/fhir/{type}/{id}"),), keys=DECRYPT, grants=(
                 READ_CURRENT,
                 Grant("ReadProvenance", "dynamodb:BatchGetItem", "ProvenanceTable"),
                 READ_OBJECTS,
                 READ_TRANSACTION_RECORD,
                 READ_PENDING_VERSION,
             )),
    Function("Vread", "vread", "GET /fhir/{type}/{id}/_history/{vid}",
             routes=(Api("GET", "/fhir/{type}/{id}/_history/{vid}"),), keys=DECRYPT, grants=(
                 Grant("ReadVersion", "dynamodb:GetItem", "HistoryTable"),
                 Grant("ReadCurrent", "dynamodb:GetItem", "ResourcesTable",
                       "A patient-scoped token: the current version decides whether the resource is in its "
                       "compartment."),
                 Grant("ReadProvenance", "dynamodb:BatchGetItem", "ProvenanceTable"),
                 READ_OBJECTS,
                 READ_TRANSACTION_RECORD,
             )),
    Function("History", "history", "GET /fhir/{type}/{id}/_history",
             routes=(Api("GET", "/fhir/{type}/{id}/_history"),), keys=DECRYPT, grants=(
                 Grant("ReadHistory", "dynamodb:Query", "HistoryTable"),
                 READ_CURRENT,
                 READ_OBJECTS,
                 READ_TRANSACTION_RECORD,
             )),
    Function("TypeHistory", "type_history", "GET /fhir/{type}/_history",
             routes=(Api("GET", "/fhir/{type}/_history"),), keys=DECRYPT,
             grants=(*READ_CHANGE_LOG, READ_OBJECTS, READ_TRANSACTION_RECORD)),
    Function("SystemHistory", "system_history", "GET /fhir/_history",
             routes=(Api("GET", "/fhir/_history"),), keys=DECRYPT,
             grants=(*READ_CHANGE_LOG, READ_OBJECTS, READ_TRANSACTION_RECORD)),
    Function("Update", "update", "PUT /fhir/{type}/{id}",
             routes=(Api("PUT", "/fhir/{type}/{id}"),), keys=ENCRYPT,
             grants=(READ_CURRENT, WRITE_NEW_VERSION, WRITE_INDEX_BESIDE, READ_OBJECTS, WRITE_OBJECTS,
                     READ_PENDING_VERSION, *SETTLE_TRANSACTIONS)),
    Function("Patch", "patch", "PATCH /fhir/{type}/{id} (JSON Patch)",
             routes=(Api("PATCH", "/fhir/{type}/{id}"),), keys=ENCRYPT,
             grants=(READ_CURRENT, WRITE_NEW_VERSION, WRITE_INDEX_BESIDE, READ_OBJECTS, WRITE_OBJECTS,
                     READ_PENDING_VERSION, *SETTLE_TRANSACTIONS)),
    Function("Delete", "delete", "DELETE /fhir/{type}/{id}",
             routes=(Api("DELETE", "/fhir/{type}/{id}"),), keys=ENCRYPT,
             grants=(READ_CURRENT, WRITE_NEW_VERSION, READ_OBJECTS, READ_PENDING_VERSION, *SETTLE_TRANSACTIONS)),
    Function("ConditionalUpdate", "conditional_update", "PUT /fhir/{type}?<search> (conditional update)",
             routes=(Api("PUT", "/fhir/{type}"),), keys=ENCRYPT,
             grants=(*CONDITIONAL_SEARCH, WRITE_NEW_VERSION, WRITE_INDEX_BESIDE, READ_OBJECTS, WRITE_OBJECTS,
                     READ_PENDING_VERSION, *SETTLE_TRANSACTIONS)),
    Function("ConditionalDelete", "conditional_delete", "DELETE /fhir/{type}?<search> (conditional delete)",
             routes=(Api("DELETE", "/fhir/{type}"),), keys=ENCRYPT,
             grants=(*CONDITIONAL_SEARCH, WRITE_NEW_VERSION, READ_OBJECTS, READ_PENDING_VERSION,
                     *SETTLE_TRANSACTIONS)),
    # Large transactions run up to API Gateway's 29 s and are CPU-bound in their prepare step (validation,
    # encryption, index extraction): one vCPU (1,769 MB). docs/TRANSACTIONS.md, "Limits".
    Function("Bundle", "bundle", "POST /fhir (transaction and batch Bundles)",
             routes=(Api("POST", "/fhir"),), keys=ENCRYPT, timeout=29, memory=1769, grants=(
                 Grant("SearchIndex", "dynamodb:Query dynamodb:GetItem", "IndexTable",
                       "Entry preconditions: current versions, If-None-Exist guards and searches."),
                 Grant("ReadCurrent", "dynamodb:GetItem dynamodb:BatchGetItem", "ResourcesTable"),
                 WRITE_NEW_VERSION,
                 WRITE_INDEX_BESIDE,
                 READ_OBJECTS,
                 WRITE_OBJECTS,
                 *SETTLE_TRANSACTIONS,
             )),
    Function("SmartConfiguration", "smart_configuration",
             "GET /fhir/.well-known/smart-configuration (SMART App Launch discovery, no authentication)",
             routes=(Api("GET", "/fhir/.well-known/smart-configuration", public=True),),
             env={"ESUS_JWT_ISSUER": "!Ref JwtIssuer", "ESUS_JWKS_URL": "!Ref JwksUrl",
                  "ESUS_SMART_AUTHORIZATION_ENDPOINT": "!Ref SmartAuthorizationEndpoint",
                  "ESUS_SMART_TOKEN_ENDPOINT": "!Ref SmartTokenEndpoint"}),
    Function("CompartmentSearch", "compartment_search", "GET /fhir/Patient/{id}/{type} (Patient compartment search)",
             routes=(Api("GET", "/fhir/{type}/{id}/{member_type}"),), keys=DECRYPT, grants=(
                 Grant("QueryIndex", "dynamodb:Query", "IndexTable",
                       "The compartment's reference index keys (and the query's own), then the matches."),
                 Grant("ReadMatches", "dynamodb:BatchGetItem", "ResourcesTable ProvenanceTable"),
                 READ_OBJECTS,
                 READ_TRANSACTION_RECORD,
                 READ_PENDING_CANDIDATES,
             )),
    Function("Everything", "everything", "GET /fhir/Patient/{id}/$everything",
             routes=(Api("GET", "/fhir/{type}/{id}/$everything"),), keys=DECRYPT, grants=(
                 Grant("ReadPatient", "dynamodb:GetItem", "ResourcesTable", "The Patient itself (a read)."),
                 Grant("QueryIndex", "dynamodb:Query", "IndexTable",
                       "The compartment's reference index keys, per type and parameter, and Provenance's."),
                 Grant("ReadMembers", "dynamodb:BatchGetItem", "ResourcesTable ProvenanceTable",
                       "One page of members, and the Practitioners, Organizations, Locations and Medications they "
                       "reference."),
                 READ_OBJECTS,
                 READ_TRANSACTION_RECORD,
                 READ_PENDING_VERSION,
                 READ_PENDING_CANDIDATES,
             )),
    Function("Search", "search", "GET /fhir/{type} and POST /fhir/{type}/_search",
             routes=(Api("GET", "/fhir/{type}"), Api("POST", "/fhir/{type}/_search", event="SearchPost")),
             keys=DECRYPT, grants=(
                 Grant("QueryIndex", "dynamodb:Query", "IndexTable"),
                 Grant("ReadMatches", "dynamodb:BatchGetItem", "ResourcesTable ProvenanceTable"),
                 READ_OBJECTS,
                 READ_TRANSACTION_RECORD,
                 READ_PENDING_CANDIDATES,
             )),
)
