"""OpenAPI (drf-spectacular): the API-key authentication, closed request bodies, described async views."""

import functools

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "inference.apis.authentication.APIKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'Send "Authorization: Api-Key <key>" (or the key alone in "X-API-Key").',
        }


# Request bodies whose unknown fields the API refuses with a 400 (it never ignores a field it
# does not know: a typo in "instances" must not pass unnoticed). The schema says so too.
CLOSED_REQUEST_BODIES = {"ModelCreate", "AliasSet", "PredictRequest", "JobSubmit", "VersionUpload"}


def close_request_bodies(result, generator, request, public):
    """drf-spectacular postprocessing hook: `additionalProperties: false` on CLOSED_REQUEST_BODIES."""
    schemas = result.get("components", {}).get("schemas", {})
    for name in CLOSED_REQUEST_BODIES & set(schemas):
        schemas[name]["additionalProperties"] = False
    return result


def described_by(operation):
    """Document a plain async Django view in the OpenAPI schema as the DRF APIView `operation` describes it.

    drf-spectacular (like DRF's own schema generators) documents each URL whose view function carries
    ``cls``, the APIView class that DRF's ``as_view()`` attaches. The predict views are async Django
    views, served on the event loop, not DRF views: each route gets its own thin wrapper carrying the
    class that describes it.
    """

    def describe(view):
        @functools.wraps(view)
        async def described(request, *args, **kwargs):
            return await view(request, *args, **kwargs)

        described.cls, described.initkwargs = operation, {}
        return described

    return describe
