"""OpenAPI 3 description of the local API, served at /openapi.json (and fuzzed by the tests)."""

from __future__ import annotations

from typing import Any

from sidecar import __version__

_TIME = {"type": ["string", "null"], "format": "date-time"}
_LEADER = {
    "type": "object",
    "required": ["role", "is_leader", "identity", "holder", "lease", "fencing_token", "term_started_at",
                 "valid_until", "observed_at", "version"],
    "properties": {
        "role": {"type": "string", "enum": ["leader", "standby", "unknown"]},
        "is_leader": {"type": "boolean"},
        "identity": {"type": "string", "description": "This candidate's holderIdentity."},
        "holder": {"type": ["string", "null"], "description": "The holder as last observed."},
        "lease": {"type": "string", "description": "namespace/name"},
        "fencing_token": {"type": ["integer", "null"],
                          "description": "Strictly increases with every leadership term; null unless leader."},
        "term_started_at": _TIME,
        "valid_until": {**_TIME, "description": "A leader must stop leader work at this time unless it "
                                                 "hears a newer valid_until."},
        "observed_at": _TIME,
        "version": {"type": "integer", "description": "Increases on every change of role, holder or token."},
        "heartbeat_at": _TIME,
        "stale_after_seconds": {"type": "number"},
        "sidecar_version": {"type": "string"},
    },
}
_ERROR = {"type": "object", "required": ["error", "status"],
          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "lease-sidecar local API", "version": __version__},
    "paths": {
        "/leader": {"get": {
            "summary": "This candidate's view of the election; long-polls with wait/since.",
            "parameters": [
                {"name": "wait", "in": "query", "required": False,
                 "schema": {"type": "number", "minimum": 0},
                 "description": "Seconds to wait for a version other than `since` (clamped to 300)."},
                {"name": "since", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {"200": _json(_LEADER, "Current view"), "400": _json(_ERROR, "Bad parameter")},
        }},
        "/leader/events": {"get": {
            "summary": "Server-Sent Events: the /leader JSON on every change.",
            "responses": {"200": {"description": "event stream",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
        }},
        "/is-leader": {"get": {
            "summary": "200 true when leader, 503 false otherwise.",
            "responses": {"200": _json({"type": "boolean"}, "leader"),
                          "503": _json({"type": "boolean"}, "not leader")},
        }},
        "/": {"get": {
            "summary": "The retired leader-elector's response: the holder's name.",
            "responses": {"200": _json({"type": "object", "properties": {"name": {"type": "string"}}},
                                       "holder")},
        }},
        "/healthz": {"get": {"summary": "The process and its loops are alive.",
                             "responses": {"200": _json({"type": "object"}, "alive"),
                                           "503": _json({"type": "object"}, "a loop died")}}},
        "/readyz": {"get": {"summary": "The lease has been observed at least once.",
                            "responses": {"200": _json({"type": "object"}, "ready"),
                                          "503": _json({"type": "object"}, "not yet")}}},
        "/openapi.json": {"get": {"summary": "This document.",
                                  "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
    },
}
