//! `GET /v1/openapi.json`: a hand-written OpenAPI 3.0 description of this API. Built once as
//! a JSON value; a test checks every route in the router is described.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Value};

pub async fn serve() -> Json<Value> {
    Json(document().clone())
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn id_param() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "description": "Recording id, e.g. rec_20240501T120000_0123456789abcdef",
        "schema": {"type": "string", "pattern": "^rec_[0-9]{8}T[0-9]{6}_[0-9a-f]{16}$"}
    })
}

fn call_id_param() -> Value {
    json!({"name": "call_id", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn table_param() -> Value {
    json!({"name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,62}$"}})
}

fn row_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}})
}

fn limit_param() -> Value {
    json!({
        "name": "limit", "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    })
}

fn query_string(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}})
}

/// The OpenAPI document.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    let mut doc = base();
    if let (Some(paths), Value::Object(more)) = (doc["paths"].as_object_mut(), operator_paths()) {
        paths.extend(more);
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.insert("Trunk".into(), trunk_schema());
    }
    doc
}

/// Live-call control, waveform peaks, trunks and the console (issue 15).
fn operator_paths() -> Value {
    let unauthorized = error_response("Missing or wrong bearer token");
    let not_found = error_response("Unknown (or invalid) id");
    json!({
            "/v1/calls/stream": {"get": {
                "summary": "Active calls as server-sent events",
                "description": "An `event: calls` whose data is the `GET /v1/calls` body, sent at once and again whenever a call starts, ends or changes state; a comment line every 15 s keeps the stream open.",
                "responses": {
                    "200": {"description": "text/event-stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "401": unauthorized
                }
            }},
            "/v1/calls/{call_id}/hangup": {"post": {
                "summary": "End a call now (BYE; before answer a final error response)",
                "parameters": [call_id_param()],
                "responses": {"204": {"description": "The call is being ended"}, "401": unauthorized, "404": error_response("No such active call")}
            }},
            "/v1/recordings/{id}/peaks": {"get": {
                "summary": "Waveform peaks of a finished recording, per channel",
                "parameters": [id_param(),
                    {"name": "buckets", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 4000, "default": 800}}],
                "responses": {
                    "200": {"description": "Per channel (caller first in stereo), the loudest sample of each of `buckets` equal slices, 0..1000",
                        "content": {"application/json": {"schema": {"type": "object", "properties": {
                            "id": {"type": "string"}, "channels": {"type": "integer"}, "sample_rate": {"type": "integer"},
                            "frames": {"type": "integer"}, "buckets": {"type": "integer"},
                            "peaks": {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000}}}
                        }}}}},
                    "400": error_response("Invalid buckets"), "401": unauthorized, "404": not_found,
                    "409": error_response("Still recording (or failed)")
                }
            }},
            "/v1/trunks": {"get": {
                "summary": "Trunk registrations ([[trunks]])",
                "responses": {
                    "200": {"description": "One object per configured trunk", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"trunks": {"type": "array", "items": {"$ref": "#/components/schemas/Trunk"}}}
                    }}}},
                    "401": unauthorized
                }
            }},
            "/console": {"get": {
                "summary": "The web console (HTML): the app with a session cookie, the login form without",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}
            }},
            "/console/login": {"post": {
                "summary": "Console login: form field `token`; sets the `voxgate_session` cookie",
                "security": [],
                "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                "responses": {"303": {"description": "Logged in; redirect to /console"}, "400": {"description": "No token"}, "401": {"description": "Wrong token (the form again)"}}
            }},
            "/console/logout": {"post": {
                "summary": "Ends the console session and clears the cookie",
                "security": [],
                "responses": {"303": {"description": "Redirect to /console"}}
            }}
    })
}

fn trunk_schema() -> Value {
    json!({"type": "object",
        "required": ["name", "registered", "expires_at", "last_error"],
        "properties": {
            "name": {"type": "string"},
            "registrar": {"type": "string"},
            "username": {"type": "string"},
            "transport": {"type": "string", "enum": ["udp", "tcp"]},
            "state": {"type": "string", "enum": ["idle", "registered", "failed", "unregistered"]},
            "registered": {"type": "boolean"},
            "expires_at": {"type": "string", "format": "date-time", "nullable": true},
            "last_registered_at": {"type": "string", "format": "date-time", "nullable": true},
            "last_error": {"type": "string", "nullable": true},
            "failures": {"type": "integer"},
            "next_attempt_at": {"type": "string", "format": "date-time", "nullable": true},
            "expires": {"type": "integer", "description": "Seconds asked for"},
            "challenge_inbound": {"type": "boolean"}
        }
    })
}

fn base() -> Value {
    let unauthorized = error_response("Missing or wrong bearer token");
    let not_found = error_response("Unknown (or invalid) id");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "voxgate operator API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Recordings, active calls, transcripts, CDRs, events and tables. Every /v1/ path needs `Authorization: Bearer <token>`."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"console": []}],
        "paths": {
            "/healthz": {"get": {
                "summary": "Liveness probe", "security": [],
                "responses": {"200": {"description": "The gateway is up"}}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics", "security": [],
                "responses": {"200": {"description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }},
            "/v1/recordings": {"get": {
                "summary": "List recordings, newest first",
                "parameters": [
                    query_string("call_id", "Only recordings of this call"),
                    query_string("q", "Case-insensitive text in the id, call id, from or to"),
                    query_string("since", "RFC 3339; started_at >= since"),
                    query_string("until", "RFC 3339; started_at < until"),
                    limit_param(),
                    query_string("cursor", "Opaque next_cursor from the previous page")
                ],
                "responses": {
                    "200": {"description": "A page of recordings", "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "recordings": {"type": "array", "items": {"$ref": "#/components/schemas/Recording"}},
                            "next_cursor": {"type": "string", "nullable": true}
                        }
                    }}}},
                    "400": error_response("Invalid filter value"),
                    "401": unauthorized
                }
            }},
            "/v1/recordings/{id}": {
                "get": {
                    "summary": "Recording metadata",
                    "parameters": [id_param()],
                    "responses": {
                        "200": {"description": "The recording", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Recording"}}}},
                        "401": unauthorized, "404": not_found
                    }
                },
                "delete": {
                    "summary": "Delete a finished recording (audio and metadata)",
                    "parameters": [id_param()],
                    "responses": {
                        "204": {"description": "Deleted"},
                        "401": unauthorized, "404": not_found,
                        "409": error_response("Still recording")
                    }
                }
            },
            "/v1/recordings/{id}/audio": {
                "get": {
                    "summary": "Download the WAV (supports Range, ETag, If-None-Match, If-Range)",
                    "parameters": [id_param(),
                        {"name": "Range", "in": "header", "schema": {"type": "string"}, "example": "bytes=0-1023"},
                        {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "The whole file", "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
                        "206": {"description": "One byte range", "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
                        "304": {"description": "ETag matched If-None-Match"},
                        "401": unauthorized, "404": not_found,
                        "416": error_response("Range not satisfiable")
                    }
                },
                "head": {
                    "summary": "Headers of the audio download (size, ETag)",
                    "parameters": [id_param()],
                    "responses": {"200": {"description": "Headers only"}, "404": {"description": "Unknown id"}}
                }
            },
            "/v1/calls": {"get": {
                "summary": "Active calls",
                "responses": {
                    "200": {"description": "Active calls", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"calls": {"type": "array", "items": {"type": "object"}}}
                    }}}},
                    "401": unauthorized
                }
            }},
            "/v1/calls/{call_id}/pause": {"post": {
                "summary": "Pause the bot on a call (input ignored until resumed)",
                "parameters": [call_id_param()],
                "responses": {"204": {"description": "Paused"}, "401": unauthorized, "404": error_response("No such active call")}
            }},
            "/v1/calls/{call_id}/resume": {"post": {
                "summary": "Resume the bot on a call",
                "parameters": [call_id_param()],
                "responses": {"204": {"description": "Resumed"}, "401": unauthorized, "404": error_response("No such active call")}
            }},
            "/v1/cdrs": {"get": {
                "summary": "Call detail records, newest first",
                "parameters": [limit_param(), query_string("call_id", "Only this call")],
                "responses": {
                    "200": {"description": "CDRs", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"cdrs": {"type": "array", "items": {"type": "object"}}}
                    }}}},
                    "400": error_response("Invalid limit"), "401": unauthorized
                }
            }},
            "/v1/events": {"get": {
                "summary": "Tracked events, newest first",
                "parameters": [limit_param(), query_string("name", "Only events with this name"),
                    query_string("call_id", "Only this call")],
                "responses": {
                    "200": {"description": "Events", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"events": {"type": "array", "items": {"type": "object"}}}
                    }}}},
                    "400": error_response("Invalid limit"), "401": unauthorized
                }
            }},
            "/v1/calls/{call_id}/transcript": {"get": {
                "summary": "The call's transcript (during and after the call)",
                "parameters": [call_id_param()],
                "responses": {
                    "200": {"description": "The transcript", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Transcript"}}}},
                    "401": unauthorized, "404": error_response("No transcript for this call")
                }
            }},
            "/v1/tables": {
                "get": {
                    "summary": "Tables of the `table` step",
                    "responses": {
                        "200": {"description": "Tables", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"tables": {"type": "array", "items": {"$ref": "#/components/schemas/Table"}}}
                        }}}},
                        "401": unauthorized
                    }
                },
                "post": {
                    "summary": "Create an empty table",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["name", "columns"],
                        "properties": {"name": {"type": "string"}, "columns": {"type": "array", "items": {"type": "string"}}}
                    }}}},
                    "responses": {
                        "201": {"description": "Created", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Table"}}}},
                        "400": error_response("Bad name or columns"), "401": unauthorized,
                        "409": error_response("The table exists")
                    }
                }
            },
            "/v1/tables/{name}": {
                "get": {
                    "summary": "One table",
                    "parameters": [table_param()],
                    "responses": {
                        "200": {"description": "The table", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Table"}}}},
                        "401": unauthorized, "404": error_response("No such table")
                    }
                },
                "delete": {
                    "summary": "Drop a table",
                    "parameters": [table_param()],
                    "responses": {"204": {"description": "Dropped"}, "401": unauthorized, "404": error_response("No such table")}
                }
            },
            "/v1/tables/{name}/rows": {
                "get": {
                    "summary": "Rows, oldest first; any other query key filters on that column (exact match)",
                    "parameters": [table_param(), limit_param(),
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}],
                    "responses": {
                        "200": {"description": "Rows", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {
                                "rows": {"type": "array", "items": {"$ref": "#/components/schemas/Row"}},
                                "count": {"type": "integer"}
                            }
                        }}}},
                        "400": error_response("Unknown column or bad limit"), "401": unauthorized,
                        "404": error_response("No such table")
                    }
                },
                "post": {
                    "summary": "Insert a row",
                    "parameters": [table_param()],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": true}}}},
                    "responses": {
                        "201": {"description": "The row", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Row"}}}},
                        "400": error_response("Unknown column"), "401": unauthorized, "404": error_response("No such table")
                    }
                }
            },
            "/v1/tables/{name}/rows/{id}": {
                "get": {
                    "summary": "One row",
                    "parameters": [table_param(), row_param()],
                    "responses": {
                        "200": {"description": "The row", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Row"}}}},
                        "401": unauthorized, "404": error_response("No such table or row")
                    }
                },
                "patch": {
                    "summary": "Change some columns of a row",
                    "parameters": [table_param(), row_param()],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": true}}}},
                    "responses": {
                        "200": {"description": "The updated row", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Row"}}}},
                        "400": error_response("Unknown column"), "401": unauthorized, "404": error_response("No such table or row")
                    }
                },
                "delete": {
                    "summary": "Delete a row",
                    "parameters": [table_param(), row_param()],
                    "responses": {"204": {"description": "Deleted"}, "401": unauthorized, "404": error_response("No such table or row")}
                }
            },
            "/v1/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document"}, "401": unauthorized}
            }}
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "console": {"type": "apiKey", "in": "cookie", "name": "voxgate_session",
                    "description": "Set by POST /console/login; writes with it also need `X-Requested-With: voxgate-console`"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string", "example": "not_found"},
                    "message": {"type": "string"}
                }},
                "Transcript": {"type": "object", "required": ["call_id", "entries"], "properties": {
                    "call_id": {"type": "string"},
                    "started_at": {"type": "string", "format": "date-time"},
                    "ended": {"type": "boolean"},
                    "dropped_entries": {"type": "integer"},
                    "entries": {"type": "array", "items": {"type": "object",
                        "required": ["at", "offset_ms", "kind", "text"],
                        "properties": {
                            "at": {"type": "string", "format": "date-time"},
                            "offset_ms": {"type": "integer"},
                            "kind": {"type": "string", "enum": ["prompt", "say", "dtmf", "speech", "step", "transfer", "recording", "call"]},
                            "text": {"type": "string"}
                        },
                        "additionalProperties": true}}
                }},
                "Table": {"type": "object", "required": ["name", "columns", "rows"], "properties": {
                    "name": {"type": "string"},
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "rows": {"type": "integer"}
                }},
                "Row": {"type": "object", "required": ["_id"], "properties": {"_id": {"type": "integer"}},
                    "additionalProperties": {"type": "string", "nullable": true}},
                "Recording": {"type": "object",
                    "required": ["id", "call_id", "from", "to", "started_at", "ended_at", "duration_ms",
                        "channels", "sample_rate", "bytes", "sha256", "status"],
                    "properties": {
                        "id": {"type": "string"},
                        "call_id": {"type": "string"},
                        "from": {"type": "string"},
                        "to": {"type": "string"},
                        "started_at": {"type": "string", "format": "date-time"},
                        "ended_at": {"type": "string", "format": "date-time", "nullable": true},
                        "duration_ms": {"type": "integer"},
                        "channels": {"type": "integer", "enum": [1, 2]},
                        "channel_mode": {"type": "string", "enum": ["stereo", "mixed"]},
                        "sample_rate": {"type": "integer", "example": 8000},
                        "bytes": {"type": "integer"},
                        "sha256": {"type": "string", "nullable": true},
                        "status": {"type": "string", "enum": ["recording", "complete", "failed", "recovered"]},
                        "reason": {"type": "string", "description": "Why it failed (status failed only)"},
                        "overflow_frames": {"type": "integer"},
                        "dropped_frames": {"type": "integer"}
                    }
                }
            }
        }
    })
}
