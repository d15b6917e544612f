"""Lambda TOKEN authorizer: verifies the bearer JWT and hands tenant, scope and fhirUser to the routes."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger

from esus.coldstart import collect_after_first_call
from esus.errors import Unauthorized
from esus.security.auth import KeysUnavailable, TokenVerifier, authorizer_context
from esus.settings import get_settings

logger = Logger()


@lru_cache(maxsize=1)
def verifier() -> TokenVerifier:
    return TokenVerifier(get_settings())


def authorize(event: dict[str, Any], context: Any) -> dict[str, Any]:
    header = str(event.get("authorizationToken") or "")
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise Unauthorized("bearer token required")
        claims = verifier().verify(token.strip())
    except Unauthorized:
        logger.info("token rejected")  # never log the token itself
        raise Exception("Unauthorized") from None  # noqa: B904 - API Gateway's contract for a 401
    except KeysUnavailable as exc:
        # Any other failure is API Gateway's AUTHORIZER_FAILURE (500): an outage must not look like a bad token.
        logger.error("signing keys unavailable", extra={"reason": str(exc)})
        raise RuntimeError("signing keys unavailable") from None
    # Allow every route of this API: the cached policy must not depend on the first method called.
    arn = str(event.get("methodArn", ""))
    api_arn = "/".join(arn.split("/")[:2]) + "/*" if arn else "*"
    return {
        "principalId": str(claims.get("sub") or "anonymous"),
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": api_arn}],
        },
        "context": authorizer_context(claims),
    }


handler = collect_after_first_call(authorize)
