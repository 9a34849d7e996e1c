"""OpenAPI 3 description of the local API, served at /openapi.json (and fuzzed by the tests)."""

from __future__ import annotations

from typing import Any

from sidecar import __version__
from sidecar.publish import app_api

_TIME = {"type": ["string", "null"], "format": "date-time"}
_LEADER = {
    "type": "object",
    "required": ["role", "is_leader", "identity", "holder", "lease", "fencing_token", "term_started_at",
                 "valid_until", "valid_until_monotonic", "valid_for_seconds", "observed_at", "version",
                 "lease_uid", "draining"],
    "properties": {
        "role": {"type": "string", "enum": ["leader", "standby", "unknown"]},
        "is_leader": {"type": "boolean"},
        "identity": {"type": "string", "description": "This candidate's holderIdentity."},
        "holder": {"type": ["string", "null"], "description": "The holder as last observed."},
        "lease": {"type": "string", "description": "namespace/name"},
        "fencing_token": {"type": ["integer", "null"],
                          "description": "Strictly increases with every leadership term; null unless leader."},
        "term_started_at": _TIME,
        "valid_until": {**_TIME, "description": "Wall-clock form of valid_until_monotonic, for people: a "
                                                 "stepped clock moves it, so do not fence by it."},
        "valid_until_monotonic": {"type": ["number", "null"],
                                  "description": "Seconds on the node's CLOCK_MONOTONIC (time.monotonic() in any "
                                                 "container of the pod) at which this leader's term may end: stop "
                                                 "leader work then unless a newer one arrives. Null unless leader."},
        "valid_for_seconds": {"type": ["number", "null"], "minimum": 0,
                              "description": "valid_until_monotonic minus now, at the moment of this answer. "
                                             "Null unless leader."},
        "lease_uid": {"type": ["string", "null"],
                      "description": "The Lease's metadata.uid as last observed (null before one is seen): a new "
                                     "uid is a new Lease, whose fencing tokens may restart."},
        "draining": {"type": "boolean",
                     "description": "A graceful release is waiting for the app to finish (--handover-drain-timeout)."},
        "observed_at": _TIME,
        "version": {"type": "integer", "description": "Increases on every change of role, holder or token (not "
                                                     "on renewals: they move valid_until_monotonic only)."},
        "heartbeat_at": _TIME,
        "stale_after_seconds": {"type": "number"},
        "sidecar_version": {"type": "string"},
        "app": {"$ref": "#/components/schemas/App"},
    },
}
_APP = {
    "type": "object",
    "description": "The app as its sidecar sees it (POST /heartbeat, or --app-health-url probes).",
    "required": ["required", "ttl_seconds", "last_heartbeat_at", "since_last_heartbeat_seconds", "alive", "info",
                 "heartbeats", "sit_out_until"],
    "properties": {
        "required": {"type": "boolean", "description": "--app-heartbeat-ttl is set: leading needs a live app."},
        "ttl_seconds": {"type": ["number", "null"]},
        "last_heartbeat_at": _TIME,
        "since_last_heartbeat_seconds": {"type": ["number", "null"]},
        "alive": {"type": ["boolean", "null"], "description": "null without --app-heartbeat-ttl."},
        "info": {"$ref": "#/components/schemas/HeartbeatInfo"},
        "heartbeats": {"type": "integer", "minimum": 0},
        "sit_out_until": {**_TIME, "description": "Set while sitting out a resign."},
    },
}
_SCALAR = {"type": ["string", "number", "boolean", "null"], "maxLength": app_api.MAX_DETAIL_STRING_CHARS}
_HEARTBEAT_INFO = {
    "type": "object",
    "additionalProperties": False,
    "description": "The seed's update_info(schedule_count, next_due_task), plus free-form flat detail.",
    "properties": {
        "schedule_count": {"type": "integer", "minimum": 0, "maximum": app_api.MAX_SCHEDULE_COUNT},
        "next_due_task": {"type": ["string", "null"], "maxLength": app_api.MAX_TASK_CHARS},
        "detail": {"type": "object", "maxProperties": app_api.MAX_DETAIL_PROPERTIES,
                   "propertyNames": {"maxLength": app_api.MAX_DETAIL_KEY_CHARS},
                   "additionalProperties": _SCALAR},
    },
}
_MEMBER = {
    "type": "object",
    "required": ["identity", "role", "alive", "info", "app_heartbeat_at", "observed_at"],
    "properties": {
        "identity": {"type": "string"},
        "role": {"type": "string", "enum": ["leader", "standby", "unknown"]},
        "alive": {"type": "boolean", "description": "Its record changed less than its duration ago, as this "
                                                    "sidecar observed it (clocks are never compared)."},
        "info": {"type": "object"},
        "app_heartbeat_at": _TIME,
        "app_alive": {"type": ["boolean", "null"], "description": "The member's own judgment of its app "
                                                                 "(null without --app-heartbeat-ttl)."},
        "observed_at": _TIME,
        "terminating": {"type": "boolean", "description": "The member got its stop signal: never named successor."},
        "sitting_out": {"type": "boolean", "description": "The member sits out a resign: not named successor."},
    },
}
_MEMBERS = {
    "type": "object",
    "required": ["enabled", "members", "counts"],
    "properties": {
        "enabled": {"type": "boolean", "description": "--members is set."},
        "members": {"type": "array", "items": _MEMBER},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
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
            "summary": "Server-Sent Events: the /leader JSON as `event: leader` on every change of version, and "
                       "as `event: renewal` (same JSON, same version) each time a renewal moves the deadline.",
            "responses": {"200": {"description": "event stream",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
        }},
        "/leader/handover": {"post": {
            "summary": "Hand leadership over to a named candidate: the leader publishes standby, then releases "
                       "the lease naming `to` as its successor; only `to` may take it for 2 s, then anyone.",
            "parameters": [{"name": "to", "in": "query", "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^\S+$"},
                            "description": "The successor's identity (holderIdentity; the pod name with the chart)."}],
            "responses": {"202": _json({"type": "object", "required": ["handover_to", "status"],
                                        "properties": {"handover_to": {"type": "string"}, "status": _LEADER}},
                                       "Taken: standby now, the release follows at once"),
                          "400": _json(_ERROR, "Missing or malformed `to`"),
                          "409": _json(_ERROR, "This candidate is not the leader")},
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
        "/heartbeat": {"post": {
            "summary": "The app is alive (and, optionally, what it is doing). Answers the /leader JSON.",
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/HeartbeatInfo"}}}},
            "responses": {"200": _json(_LEADER, "Recorded; the current view"),
                          "400": _json(_ERROR, "Not JSON, or breaks the schema"),
                          "413": _json(_ERROR, f"Body over {app_api.MAX_BODY_BYTES} bytes")},
        }},
        "/leader/resign": {"post": {
            "summary": "Give leadership up now: standby is published, the lease released, and this candidate "
                       "sits out `sit_out` seconds and, with --app-heartbeat-ttl, until the app's next "
                       "heartbeat after that.",
            "parameters": [{"name": "sit_out", "in": "query", "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": app_api.MAX_SIT_OUT_S},
                            "description": "Seconds (default: --heartbeat-interval)."}],
            "responses": {"200": _json(_LEADER, "Standby now; the release follows at once"),
                          "400": _json(_ERROR, "Bad parameter")},
        }},
        "/members": {"get": {
            "summary": "Every candidate of this election (--members), as this sidecar observes them.",
            "responses": {"200": _json(_MEMBERS, "Members")},
        }},
    },
    "components": {"schemas": {"App": _APP, "HeartbeatInfo": _HEARTBEAT_INFO}},
}


def describe_locks(max_ttl_s: float, key_pattern: str, max_wait_s: float) -> None:
    """With --locks: /locks/{key} joins this document (its ttl bound is --lock-max-ttl)."""
    key = {"name": "key", "in": "path", "required": True,
           "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": key_pattern},
           "description": "Segments of letters, digits, '.', '_', ':' and '-', each starting with a letter or "
                          "digit, joined by single '/'; at most 200 characters."}
    owner = {"name": "owner", "in": "query", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
             "description": "The handle the acquisition returned."}
    hold = {"type": "object", "required": ["key", "owner", "fencing_token", "lease", "valid_until_monotonic",
                                          "valid_for_seconds"],
            "properties": {"key": {"type": "string"}, "owner": {"type": "string"},
                           "fencing_token": {"type": "integer", "description": "Grows with every acquisition of "
                                             "the key, never restarts; fence with lease_fence(lease, token)."},
                           "lease": {"type": "string", "description": "namespace/name: the fence's scope."},
                           "valid_until_monotonic": {"type": "number", "description": "CLOCK_MONOTONIC seconds at "
                                                     "which the lock may end unless renewed (PUT) before."},
                           "valid_for_seconds": {"type": "number", "minimum": 0},
                           "ttl_seconds": {"type": "number"}}}
    refused = {"type": "object", "required": ["error", "status", "key"],
               "properties": {"error": {"type": "string"}, "status": {"type": "integer"}, "key": {"type": "string"},
                              "holder": {"type": ["string", "null"]}, "lease": {"type": ["string", "null"]},
                              "retry_after_seconds": {"type": "number"}}}
    retry = {"Retry-After": {"schema": {"type": "string"}, "description": "Whole seconds."}}
    busy = {**_json(refused, "Held by another owner (or not free yet, or the wait ran out)"), "headers": retry}
    limited = {**_json(refused, "Over the pod's request rate or key limit"), "headers": retry}
    bad = _json(_ERROR, "A bad key, ttl, wait or owner")
    state = {"type": "object", "required": ["key", "lease", "locked", "holder"],
             "properties": {"key": {"type": "string"}, "lease": {"type": "string"}, "locked": {"type": "boolean"},
                            "holder": {"type": ["string", "null"]}, "observed": {"type": "boolean"},
                            **hold["properties"]}}
    OPENAPI["paths"]["/locks/{key}"] = {
        "parameters": [key],
        "post": {"summary": "try_acquire: the lock for a new owner, or 409 with the holder.",
                 "parameters": [{"name": "ttl", "in": "query", "required": False,
                                 "schema": {"type": "number", "minimum": 1, "maximum": max_ttl_s},
                                 "description": "Seconds (also 5s, 1500ms) the owner may go without renewing "
                                                "(default and maximum: --lock-max-ttl)."},
                                {"name": "wait", "in": "query", "required": False,
                                 "schema": {"type": "number", "minimum": 0, "maximum": max_wait_s},
                                 "description": "Seconds to wait for the key, watching (default 0)."}],
                 "responses": {"200": _json(hold, "Acquired"), "400": bad, "409": busy, "429": limited}},
        "put": {"summary": "renew: the owner is alive; answers the new deadline, or 409 once lost.",
                "parameters": [owner],
                "responses": {"200": _json(hold, "Renewed"), "400": bad, "409": _json(refused, "Lost, or never "
                                                                                                "held by this owner"),
                              "429": limited}},
        "delete": {"summary": "release: the Lease is released at once (others take it without waiting).",
                   "parameters": [owner],
                   "responses": {"200": _json({"type": "object", "required": ["key", "released"],
                                               "properties": {"key": {"type": "string"},
                                                              "released": {"type": "boolean"},
                                                              "release_written": {"type": "boolean"}}}, "Released"),
                                 "400": bad, "409": _json(refused, "Not held by this owner"), "429": limited}},
        "get": {"summary": "is_locked: holder as this sidecar observes it; with owner, its token and deadline.",
                "parameters": [{**owner, "required": False}],
                "responses": {"200": _json(state, "State"), "400": bad, "429": limited}},
    }
