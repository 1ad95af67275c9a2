"""The OpenAPI 3 document of ``/api/`` (served at ``/api/openapi.json``), built from plain dicts.

Each API keeps its part here: ``PACKAGE_PATHS`` (GitHub's packages endpoints, ``proxy.http.api``)
and ``ADMIN_PATHS`` (the accounts API, ``proxy.http.admin_api``); ``SCHEMAS`` holds the components.
The document says exactly what the handlers answer, statuses and bodies: CI runs schemathesis
against it.
"""

from __future__ import annotations

from typing import Any

DOCUMENTATION_URL = "https://docs.github.com/rest/packages/packages"

_NULLABLE_STRING = {"type": "string", "nullable": True}
_TIME = {"type": "string", "format": "date-time", "example": "2026-12-01T00:00:00Z"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["message", "documentation_url"],
        "properties": {"message": {"type": "string"}, "documentation_url": {"type": "string"}},
    },
    "Owner": {
        "type": "object",
        "required": ["login", "type"],
        "properties": {"login": {"type": "string"}, "type": {"type": "string", "enum": ["User", "Organization"]}},
    },
    "Package": {
        "type": "object",
        "required": ["id", "name", "package_type", "visibility", "owner", "version_count", "url", "html_url",
                     "created_at", "updated_at", "description", "licenses", "source", "truncated"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "package_type": {"type": "string", "enum": ["container"]},
            "visibility": {"type": "string", "enum": ["private", "internal", "public"]},
            "owner": {"$ref": "#/components/schemas/Owner"},
            "version_count": {"type": "integer", "minimum": 0},
            "url": {"type": "string"},
            "html_url": {"type": "string"},
            "created_at": _TIME,
            "updated_at": _TIME,
            "description": _NULLABLE_STRING,
            "licenses": _NULLABLE_STRING,
            "source": _NULLABLE_STRING,
            "truncated": {"type": "array", "items": {"type": "string",
                                                     "enum": ["source", "description", "licenses"]},
                          "description": "metadata fields cut to their length limit"},
        },
    },
    "VisibilityChange": {
        "allOf": [{"$ref": "#/components/schemas/Package"},
                  {"type": "object", "required": ["notice"],
                   "properties": {"notice": {**_NULLABLE_STRING,
                                             "description": "said when a public package stops being public"}}}],
    },
    "Version": {
        "type": "object",
        "required": ["id", "name", "url", "html_url", "package_html_url", "tags", "platforms", "size",
                     "created_at", "updated_at", "deleted_at", "download_count", "metadata"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string", "description": "the manifest's digest"},
            "url": {"type": "string"},
            "html_url": {"type": "string"},
            "package_html_url": {"type": "string"},
            "media_type": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "platforms": {"type": "array", "items": {"type": "string"}},
            "size": {"type": "integer", "minimum": 0},
            "created_at": _TIME,
            "updated_at": _TIME,
            "deleted_at": {**_TIME, "nullable": True},
            "download_count": {"type": "integer", "minimum": 0},
            "metadata": {
                "type": "object", "required": ["package_type", "container"],
                "properties": {"package_type": {"type": "string", "enum": ["container"]},
                               "container": {"type": "object", "required": ["tags"],
                                             "properties": {"tags": {"type": "array",
                                                                     "items": {"type": "string"}}}}},
            },
        },
    },
}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: dict, headers: dict | None = None) -> dict:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


_REF = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
_ERRORS = {"401": _error("Requires authentication (or the credentials are wrong)"),
           "403": _error("Forbidden: a scope or role is missing, or the act is not allowed"),
           "404": _error("Resource not found (or not visible to the caller)"),
           "429": _error("Too many failed sign-ins from this client or for this user"),
           "503": _error("The database is unavailable")}
_NO_CONTENT = {"description": "No Content"}
_LINK = {"Link": {"description": 'Paging: rel="next", rel="last", rel="prev", rel="first"',
                  "schema": {"type": "string"}}}

_PAGE = [{"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000000,
                                                    "default": 1}},
         {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                                        "default": 30}}]
_PACKAGE_TYPE_QUERY = {"name": "package_type", "in": "query", "required": True,
                       "schema": {"type": "string", "enum": ["container"]}}
_VISIBILITY_QUERY = {"name": "visibility", "in": "query",
                     "schema": {"type": "string", "enum": ["public", "private", "internal"]}}
_PACKAGE_TYPE = {"name": "package_type", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": ["container"]}}
_NAME = {"name": "package_name", "in": "path", "required": True,
         "description": "the package's name; a name with / is sent with %2F",
         "schema": {"type": "string", "minLength": 1}}
_VERSION_ID = {"name": "package_version_id", "in": "path", "required": True,
               "schema": {"type": "integer", "minimum": 1}}
_STATE = {"name": "state", "in": "query", "schema": {"type": "string", "enum": ["active", "deleted"],
                                                     "default": "active"}}

# (path prefix under /api, owner path parameter, words for summaries, operation id stem)
OWNERS = (("/api/user", None, "the signed-in user", "user"),
          ("/api/users/{username}", {"name": "username", "in": "path", "required": True,
                                     "schema": {"type": "string", "minLength": 1}}, "a user", "users"),
          ("/api/orgs/{org}", {"name": "org", "in": "path", "required": True,
                               "schema": {"type": "string", "minLength": 1}}, "an organization", "orgs"))


def _operation(op_id: str, summary: str, parameters: list, responses: dict, body: dict | None = None) -> dict:
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": ["packages"],
                                 "parameters": parameters, "responses": {**responses}}
    if body is not None:
        operation["requestBody"] = body
    return operation


def _package_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for prefix, owner, words, stem in OWNERS:
        owner_params = [owner] if owner else []
        errors = dict(_ERRORS)
        package = f"{prefix}/packages/{{package_type}}/{{package_name}}"
        addressed = [*owner_params, _PACKAGE_TYPE, _NAME]
        paths[f"{prefix}/packages"] = {"get": _operation(
            f"packages/list-packages-for-{stem}", f"List packages of {words}",
            [*owner_params, _PACKAGE_TYPE_QUERY, _VISIBILITY_QUERY, *_PAGE],
            {"200": _json("The packages the caller may read", {"type": "array", "items": _REF("Package")}, _LINK),
             **errors, "422": _error("Validation failed")})}
        paths[package] = {
            "get": _operation(f"packages/get-package-for-{stem}", f"Get a package of {words}", addressed,
                              {"200": _json("The package", _REF("Package")), **errors}),
            "delete": _operation(f"packages/delete-package-for-{stem}", f"Delete a package of {words}", addressed,
                                 {"204": _NO_CONTENT, **errors}),
            "patch": _operation(
                f"packages/set-visibility-for-{stem}", f"Change the visibility of a package of {words}", addressed,
                {"200": _json("The package, and a notice when it stopped being public", _REF("VisibilityChange")),
                 "400": _error("Problems parsing JSON"), **errors, "422": _error("Validation failed")},
                {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["visibility"],
                    "properties": {"visibility": {"type": "string",
                                                  "enum": ["private", "internal", "public"]}}}}}}),
        }
        paths[f"{package}/restore"] = {"post": _operation(
            f"packages/restore-package-for-{stem}", f"Restore a deleted package of {words}", addressed,
            {"204": _NO_CONTENT, **errors, "409": _error("The name is used by a new package, or the content is gone")})}
        paths[f"{package}/versions"] = {"get": _operation(
            f"packages/get-all-package-versions-for-{stem}", f"List the versions of a package of {words}",
            [*addressed, _STATE, *_PAGE],
            {"200": _json("The versions", {"type": "array", "items": _REF("Version")}, _LINK),
             **errors, "422": _error("Validation failed")})}
        paths[f"{package}/versions/{{package_version_id}}"] = {
            "get": _operation(f"packages/get-package-version-for-{stem}", f"Get a package version of {words}",
                              [*addressed, _VERSION_ID], {"200": _json("The version", _REF("Version")), **errors}),
            "delete": _operation(f"packages/delete-package-version-for-{stem}",
                                 f"Delete a package version of {words}", [*addressed, _VERSION_ID],
                                 {"204": _NO_CONTENT, **errors}),
        }
        paths[f"{package}/versions/{{package_version_id}}/restore"] = {"post": _operation(
            f"packages/restore-package-version-for-{stem}", f"Restore a deleted package version of {words}",
            [*addressed, _VERSION_ID],
            {"204": _NO_CONTENT, **errors, "409": _error("The version's content is gone")})}
    return paths


PACKAGE_PATHS: dict[str, Any] = _package_paths()


# roles on a package (proxy.http.api: list_roles, set_role, delete_role) ------------------------------
_ROLE = {"type": "string", "enum": ["read", "write", "admin"]}
SCHEMAS.update({
    "UserRole": {"type": "object", "required": ["user", "role"],
                 "properties": {"user": {"type": "string"}, "role": _ROLE}},
    "OrgRole": {"type": "object", "required": ["org", "role"],
                "description": "a role held by every member of the organisation",
                "properties": {"org": {"type": "string"}, "role": _ROLE}},
    "PackageRole": {"oneOf": [{"$ref": "#/components/schemas/UserRole"},
                              {"$ref": "#/components/schemas/OrgRole"}]},
})
_GRANTEES = (("users/{user}", {"name": "user", "in": "path", "required": True,
                               "description": "the user who holds the role",
                               "schema": {"type": "string", "minLength": 1}}, "a user", "user", "UserRole"),
             ("orgs/{group}", {"name": "group", "in": "path", "required": True,
                               "description": "the organisation whose members hold the role, as a group",
                               "schema": {"type": "string", "minLength": 1}},
              "an organisation's members", "org", "OrgRole"))


def _role_paths() -> dict[str, Any]:
    """Who holds which role on a package, and granting or removing one: for the package's admins
    (a token with ``write:packages``)."""
    paths: dict[str, Any] = {}
    for prefix, owner, words, stem in OWNERS:
        roles = f"{prefix}/packages/{{package_type}}/{{package_name}}/roles"
        addressed = [*([owner] if owner else []), _PACKAGE_TYPE, _NAME]
        paths[roles] = {"get": _operation(
            f"packages/list-package-roles-for-{stem}", f"List the roles granted on a package of {words}", addressed,
            {"200": _json("The roles: users' first, then organisations', by name",
                          {"type": "array", "items": _REF("PackageRole")}), **_ERRORS})}
        for grantee_path, grantee, grantee_words, kind, schema in _GRANTEES:
            parameters = [*addressed, grantee]
            paths[f"{roles}/{grantee_path}"] = {
                "put": _operation(
                    f"packages/set-package-{kind}-role-for-{stem}",
                    f"Give {grantee_words} a role on a package of {words} (replacing theirs)", parameters,
                    {"200": _json("The role", _REF(schema)), "400": _error("Problems parsing JSON"), **_ERRORS,
                     "422": _error("Validation failed: not a role")},
                    {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["role"], "properties": {"role": _ROLE}}}}}),
                "delete": _operation(
                    f"packages/remove-package-{kind}-role-for-{stem}",
                    f"Remove the role of {grantee_words} on a package of {words}", parameters,
                    {"204": _NO_CONTENT, **_ERRORS}),
            }
    return paths


PACKAGE_PATHS.update(_role_paths())


# the accounts API (proxy.http.admin_api) ------------------------------------------------------------
_STAMP = {"type": "string", "example": "2026-12-01T23:21:12.255Z"}
SCHEMAS.update({
    "AccountError": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
    "User": {"type": "object", "required": ["id", "name", "admin", "created_at", "orgs"],
             "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "admin": {"type": "boolean"},
                            "created_at": _STAMP,
                            "orgs": {"type": "object", "additionalProperties": {"type": "string"},
                                     "description": "organisation -> owner | member"}}},
    "Org": {"type": "object", "required": ["id", "name", "created_at", "members"],
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "created_at": _STAMP,
                           "members": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "Membership": {"type": "object", "required": ["org", "user", "role"],
                   "properties": {"org": {"type": "string"}, "user": {"type": "string"},
                                  "role": {"type": "string"}}},
    "Token": {"type": "object",
              "required": ["id", "user", "hint", "scopes", "note", "state", "created_at", "expires_at",
                           "last_used_at", "revoked_at"],
              "properties": {"id": {"type": "integer"}, "user": {"type": "string"}, "hint": {"type": "string"},
                             "scopes": {"type": "array", "items": {"type": "string"}}, "note": {"type": "string"},
                             "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
                             "created_at": _STAMP, "expires_at": {**_STAMP, "nullable": True},
                             "last_used_at": {**_STAMP, "nullable": True},
                             "revoked_at": {**_STAMP, "nullable": True}}},
    "NewToken": {"allOf": [{"$ref": "#/components/schemas/Token"},
                           {"type": "object", "required": ["token"],
                            "properties": {"token": {"type": "string", "description": "shown once"}}}]},
})


def _account_error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AccountError"}}}}


def _account_operation(op_id: str, summary: str, parameters: list, responses: dict,
                       body: dict | None = None) -> dict:
    errors = {"401": _account_error("Requires authentication"),
              "403": _account_error("Not a server admin, or more scopes than the caller's token"),
              "429": _account_error("Too many failed sign-ins")}
    if body is not None:
        errors["413"] = _account_error("The body is too large")
        errors["422"] = _account_error("The body or a field is not what the endpoint takes")
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": ["accounts"],
                                 "parameters": parameters, "responses": {**responses, **errors}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _path(name: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string", "minLength": 1}}


_NEW_TOKEN = {"type": "object", "required": ["scopes"],
              "properties": {"scopes": {"type": "array", "items": {
                  "type": "string", "enum": ["read:packages", "write:packages", "delete:packages"]}},
                             "expires_days": {"type": "integer", "minimum": 1, "nullable": True},
                             "note": {"type": "string"}}}
_TOKEN_ID = _path("id", {"type": "integer", "minimum": 1})
_NOT_FOUND = {"404": _account_error("No such user, organisation or token")}

ADMIN_PATHS: dict[str, Any] = {
    "/api/admin/users": {
        "get": _account_operation("accounts/list-users", "List users", [],
                                  {"200": _json("The users", {"type": "array", "items": _REF("User")})}),
        "post": _account_operation("accounts/add-user", "Add a user", [],
                                   {"201": _json("The new user", _REF("User"))},
                                   {"type": "object", "required": ["name"],
                                    "properties": {"name": {"type": "string"}, "admin": {"type": "boolean"}}}),
    },
    "/api/admin/orgs": {
        "get": _account_operation("accounts/list-orgs", "List organisations", [],
                                  {"200": _json("The organisations", {"type": "array", "items": _REF("Org")})}),
        "post": _account_operation("accounts/add-org", "Add an organisation", [],
                                   {"201": _json("The new organisation", _REF("Org")), **_NOT_FOUND},
                                   {"type": "object", "required": ["name", "owner"],
                                    "properties": {"name": {"type": "string"}, "owner": {"type": "string"}}}),
    },
    "/api/admin/orgs/{org}/members/{user}": {
        "put": _account_operation("accounts/set-member", "Add a member or change their role",
                                  [_path("org"), _path("user")],
                                  {"200": _json("The membership", _REF("Membership")), **_NOT_FOUND},
                                  {"type": "object", "properties": {
                                      "role": {"type": "string", "enum": ["owner", "member"]}}}),
    },
    "/api/admin/users/{user}/tokens": {
        "get": _account_operation("accounts/list-tokens-of-user", "List a user's tokens", [_path("user")],
                                  {"200": _json("The tokens", {"type": "array", "items": _REF("Token")}),
                                   **_NOT_FOUND}),
        "post": _account_operation("accounts/create-token-for-user", "Create a token for a user",
                                   [_path("user")], {"201": _json("The token, with its secret", _REF("NewToken")),
                                                     **_NOT_FOUND}, _NEW_TOKEN),
    },
    "/api/admin/tokens/{id}": {
        "delete": _account_operation("accounts/revoke-token", "Revoke a token", [_TOKEN_ID],
                                     {"204": _NO_CONTENT, **_NOT_FOUND}),
    },
    "/api/user/tokens": {
        "get": _account_operation("accounts/list-own-tokens", "List the signed-in user's tokens", [],
                                  {"200": _json("The tokens", {"type": "array", "items": _REF("Token")})}),
        "post": _account_operation("accounts/create-own-token", "Create a token (within the caller's scopes)", [],
                                   {"201": _json("The token, with its secret", _REF("NewToken"))}, _NEW_TOKEN),
    },
    "/api/user/tokens/{id}": {
        "delete": _account_operation("accounts/revoke-own-token", "Revoke one of the signed-in user's tokens",
                                     [_TOKEN_ID], {"204": _NO_CONTENT, **_NOT_FOUND}),
    },
}


_NULLABLE_STAMP = {"type": "number", "nullable": True, "description": "seconds since the epoch"}
_IMAGE_STATUS = {"type": "object", "required": ["state", "tags", "bytes", "last_success", "last_error"],
                 "properties": {"state": {"type": "string", "enum": ["pending", "syncing", "synced", "failed"]},
                                "tags": {"type": "array", "items": {"type": "string"}},
                                "blobs": {"type": "integer"}, "bytes": {"type": "integer"},
                                "fetched_bytes": {"type": "integer"}, "last_success": _NULLABLE_STAMP,
                                "last_error": {"type": "string", "nullable": True},
                                "updated_at": {"type": "number"}}}
_LIST_STATUS = {"type": "object", "required": ["list", "state", "images"],
                "properties": {"list": {"type": "string"},
                               "state": {"type": "string", "enum": ["running", "done", "failed"]},
                               "stale": {"type": "boolean", "description": "running, but its process stopped writing"},
                               "started_at": {"type": "number"}, "finished_at": _NULLABLE_STAMP,
                               "updated_at": {"type": "number"}, "images_synced_total": {"type": "integer"},
                               "bytes_synced_total": {"type": "integer"}, "failures_total": {"type": "integer"},
                               "last_success": _NULLABLE_STAMP,
                               "images": {"type": "object", "additionalProperties": _IMAGE_STATUS}}}
MIRROR_PATHS: dict[str, Any] = {
    "/api/mirror/status": {
        "get": {**_account_operation("mirror/status", "How the mirror lists' syncs are doing, per image (server admins)",
                                     [], {"200": _json("Every synced list", {
                                         "type": "object", "required": ["lists"],
                                         "properties": {"lists": {"type": "array", "items": _LIST_STATUS}}})}),
                "tags": ["mirror"]},
    },
}


_INT = {"type": "integer", "minimum": 0}
_NULLABLE_INT = {"type": "integer", "minimum": 0, "nullable": True}
_FIGURES = {"type": "object",
            "required": ["hits", "misses", "hit_ratio", "bytes_from_cache", "bytes_from_upstream",
                         "upstream_requests", "upstream_requests_saved", "evictions", "evicted_bytes", "by_kind"],
            "properties": {"hits": _INT, "misses": _INT,
                           "hit_ratio": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
                           "bytes_from_cache": _INT, "bytes_from_upstream": _INT, "upstream_requests": _INT,
                           "upstream_requests_saved": _INT, "evictions": _INT, "evicted_bytes": _INT,
                           "by_kind": {"type": "object", "additionalProperties": {
                               "type": "object", "required": ["hits", "misses"],
                               "properties": {"hits": _INT, "misses": _INT}}}}}
_CACHED_IMAGE = {"type": "object",
                 "required": ["upstream", "repository", "tag", "digest", "size", "pulls", "last_pulled"],
                 "properties": {"upstream": _NULLABLE_STRING, "repository": {"type": "string"},
                                "tag": _NULLABLE_STRING, "digest": {"type": "string"}, "size": _INT,
                                "pulls": _INT, "last_pulled": _NULLABLE_STAMP}}
_CACHE_STATS = {
    "type": "object",
    "required": ["generated_at", "history_hours", "sample_seconds", "totals", "window", "store", "upstreams",
                 "fills", "evictions", "largest", "most_pulled", "history"],
    "properties": {
        "generated_at": {"type": "number"}, "history_hours": {"type": "number"},
        "sample_seconds": {"type": "number"}, "totals": _FIGURES,
        "window": {"allOf": [_FIGURES, {"type": "object", "required": ["since"],
                                        "properties": {"since": {"type": "number"}}}]},
        "store": {"type": "object", "required": ["cached_bytes", "pushed_bytes", "kept_bytes", "budget_bytes",
                                                 "budget_used"],
                  "properties": {"cached_bytes": {"type": "integer"}, "pushed_bytes": {"type": "integer"},
                                 "kept_bytes": {"type": "integer"}, "budget_bytes": _INT,
                                 "budget_used": {"type": "number", "nullable": True}}},
        "upstreams": {"type": "array", "items": {
            "type": "object", "required": ["name", "limit", "remaining", "resets_at", "blocked_until", "circuit"],
            "properties": {"name": {"type": "string"}, "limit": _NULLABLE_INT, "remaining": _NULLABLE_INT,
                           "resets_at": _NULLABLE_STAMP, "blocked_until": _NULLABLE_STAMP,
                           "circuit": {"type": "string", "enum": ["closed", "half_open", "open"]}}}},
        "fills": {"type": "array", "items": {
            "type": "object", "required": ["upstream", "repository", "digest", "bytes", "size", "started_at", "hidden"],
            "properties": {"upstream": _NULLABLE_STRING, "repository": _NULLABLE_STRING, "digest": _NULLABLE_STRING,
                           "bytes": _INT, "size": _NULLABLE_INT, "started_at": _NULLABLE_STAMP,
                           "hidden": {"type": "boolean", "description": "names withheld from this caller"}}}},
        "evictions": {"type": "array", "items": {
            "type": "object", "required": ["digest", "size", "at", "repositories", "hidden"],
            "properties": {"digest": _NULLABLE_STRING, "size": _INT, "at": {"type": "number"},
                           "repositories": {"type": "array", "items": {"type": "string"}},
                           "hidden": {"type": "boolean"}}}},
        "largest": {"type": "array", "items": _CACHED_IMAGE},
        "most_pulled": {"type": "array", "items": _CACHED_IMAGE},
        "history": {"type": "array", "items": {
            "type": "object",
            "required": ["at", "hits", "misses", "bytes_from_cache", "bytes_from_upstream", "upstream_requests",
                         "upstream_requests_saved", "evictions", "evicted_bytes", "cached_bytes", "budget_bytes"],
            "properties": {"at": {"type": "number"}, "hits": _INT, "misses": _INT, "bytes_from_cache": _INT,
                           "bytes_from_upstream": _INT, "upstream_requests": _INT,
                           "upstream_requests_saved": _INT, "evictions": _INT, "evicted_bytes": _INT,
                           "cached_bytes": {"type": "integer"}, "budget_bytes": _INT}}},
    },
}
STATS_PATHS: dict[str, Any] = {
    "/api/cache/stats": {
        "get": {"operationId": "cache/stats", "tags": ["cache"], "parameters": [],
                "summary": "How the cache is doing: figures, history, quotas, fills, evictions, top images "
                           "(image names only those the caller may pull)",
                "responses": {"200": _json("The cache's figures and lists", _CACHE_STATS),
                              "401": _account_error("The credentials presented are wrong"),
                              "429": _account_error("Too many failed sign-ins")}},
    },
}


# the cache's API (proxy.http.cache_api) ------------------------------------------------------------
_NULLABLE_TIME = {**_STAMP, "nullable": True}
_CACHED_TAG = {"type": "object",
               "required": ["tag", "digest", "media_type", "size", "public", "cached_at", "last_pulled", "pulls"],
               "properties": {"tag": {"type": "string"}, "digest": {"type": "string"},
                              "media_type": {"type": "string"},
                              "size": {"type": "integer", "minimum": 0,
                                       "description": "the manifest and what it references in the store, once each"},
                              "public": {"type": "boolean"}, "cached_at": _NULLABLE_TIME,
                              "last_pulled": _NULLABLE_TIME, "pulls": {"type": "integer", "minimum": 0}}}
_CACHED_REPOSITORY = {"type": "object",
                      "required": ["name", "upstream", "repository", "size", "last_pulled", "pulls", "tags"],
                      "properties": {"name": {"type": "string", "description": "<upstream>/<repository>"},
                                     "upstream": {"type": "string"}, "repository": {"type": "string"},
                                     "size": {"type": "integer", "minimum": 0,
                                              "description": "content shared by its tags counted once"},
                                     "last_pulled": _NULLABLE_TIME, "pulls": {"type": "integer", "minimum": 0},
                                     "tags": {"type": "array", "items": _CACHED_TAG}}}
_CACHED_REF = {"type": "object", "required": ["name", "tag", "digest"],
               "properties": {"name": {"type": "string"}, "tag": {"type": "string"}, "digest": {"type": "string"},
                              "size": {"type": "integer"}}}


def _cache_operation(op_id: str, summary: str, parameters: list, answer: dict, body: dict | None = None,
                     extra: dict | None = None) -> dict:
    operation = _account_operation(op_id, summary, parameters, {"200": answer, **(extra or {})}, body)
    if body is None:
        operation["responses"]["422"] = _account_error("A query parameter names no upstream or cached repository")
    return {**operation, "tags": ["cache"]}


CACHE_PATHS: dict[str, Any] = {
    "/api/cache/repositories": {
        "get": _cache_operation(
            "cache/list-repositories", "What the cache holds: repositories, tags, sizes, pulls (server admins)",
            [{"name": "upstream", "in": "query", "schema": {"type": "string"}},
             {"name": "repo", "in": "query", "schema": {"type": "string"},
              "description": "a repository as clients name it (with its upstream's prefix)"}, *_PAGE],
            _json("A page of the cached repositories (a Link header names the others)",
                  {"type": "object", "required": ["repositories", "total_count"],
                   "properties": {"repositories": {"type": "array", "items": _CACHED_REPOSITORY},
                                  "total_count": {"type": "integer", "minimum": 0}}})),
    },
    "/api/cache/purge": {
        "post": _cache_operation(
            "cache/purge", "Drop cached tags and what only they need (server admins, delete:packages)", [],
            _json("What was dropped (or would be, with dry_run)", {
                "type": "object", "required": ["dry_run", "tags", "kept", "removed", "freed_bytes", "in_use"],
                "properties": {"dry_run": {"type": "boolean"}, "tags": {"type": "array", "items": _CACHED_REF},
                               "kept": {"type": "array", "items": _CACHED_REF,
                                        "description": "tags a mirror list or an import keeps: left alone"},
                               "removed": {"type": "integer"}, "freed_bytes": {"type": "integer"},
                               "in_use": {"type": "integer", "description": "being read: left for the budget"},
                               "still_needed": {"type": "integer"}}}),
            {"type": "object", "properties": {
                "ref": {"type": "string", "description": "NAME:TAG or NAME@DIGEST"},
                "repo": {"type": "string"}, "upstream": {"type": "string"},
                "older_than": {"type": "string", "example": "30d"}, "dry_run": {"type": "boolean"}}}),
    },
    "/api/cache/warm": {
        "post": _cache_operation(
            "cache/warm", "Fetch images into the cache ahead of a rollout (server admins, write:packages)", [],
            _json("How the warm-up went, per image", {
                "type": "object", "required": ["ok", "images", "seconds"],
                "properties": {"ok": {"type": "boolean"}, "seconds": {"type": "number"},
                               "images": {"type": "array", "items": {"type": "object"}}}}),
            {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "platforms": {"type": "array", "items": {"type": "string"}}}},
            {"409": _account_error("Another warm-up runs")}),
    },
}


def document(server_url: str | None = None) -> dict[str, Any]:
    """The whole document; ``server_url`` (how the caller reached Wharf) becomes its server."""
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "Wharf API", "version": "1",
                 "description": "GitHub-style packages endpoints of Wharf's embedded registry, its "
                                "accounts API, and the status of mirror syncs."},
        "paths": {**PACKAGE_PATHS, **ADMIN_PATHS, **MIRROR_PATHS, **CACHE_PATHS, **STATS_PATHS},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                          "description": "user name and personal access token"},
                                "bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a personal access token"}},
        },
        "security": [{}, {"basic": []}, {"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
