"""OpenAPI (drf-spectacular) description of the API-key authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "inference.auth.APIKeyAuthentication"
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
