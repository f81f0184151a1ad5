//! The OpenAPI document of the HTTP API, generated from the code: request
//! schemas come from the `Operation` types themselves (schemars), so the
//! document cannot drift from what the server parses. Served at
//! `/v1/openapi.json` and checked in as `docs/openapi.json` (a test fails
//! when they differ).

use custos_ops::Operation;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// Responses: `ok` for 200, and a problem document for each other status.
fn responses(ok: Value, statuses: &[u16]) -> Value {
    let mut m = Map::new();
    m.insert("200".into(), ok);
    for s in statuses {
        let why = match s {
            400 => "the request is malformed or asks for what cannot be done (exit 2)",
            401 => "no credential, or a wrong one (exit 6)",
            403 => "the principal's roles or grants do not allow it (exit 8)",
            404 => "what it names does not exist (exit 3)",
            409 => "the vault's state forbids it now: a key's state (exit 5) or another conflict (exit 1)",
            422 => "data or a ciphertext failed authentication (exit 4), or the Idempotency-Key came with another request (exit 2)",
            _ => "the server cannot serve it now",
        };
        m.insert(s.to_string(), problem(why));
    }
    Value::Object(m)
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn key_service(action: &str, body: Value, answer: &[&str], statuses: &[u16]) -> Value {
    let mut props = Map::new();
    for a in answer {
        props.insert(a.to_string(), json!({ "type": "string" }));
    }
    json!({
        "post": {
            "operationId": format!("key_{action}"),
            "summary": format!("Key service: {action}"),
            "tags": ["key service"],
            "parameters": [{ "name": "label", "in": "path", "required": true, "schema": { "$ref": "#/components/schemas/KeyLabel" } }],
            "requestBody": json_body(body),
            "responses": responses(
                json!({ "description": "done", "content": { "application/json": { "schema": {
                    "type": "object", "required": answer, "properties": props
                } } } }),
                statuses,
            ),
        }
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let operation = generator.subschema_for::<Operation>().to_value();
    let label = generator.subschema_for::<custos_core::model::KeyLabel>().to_value();
    let dataset = generator.subschema_for::<custos_core::model::DatasetName>().to_value();
    let volume = generator.subschema_for::<custos_core::model::VolumeName>().to_value();
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details, with the CLI's exit code",
            "required": ["type", "title", "status", "detail", "code", "exit"],
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
                "code": { "type": "string", "enum": ["other", "conflict", "invalid", "usage", "not-found", "integrity", "key-state", "authentication", "unavailable", "forbidden", "busy", "alerts"] },
                "exit": { "type": "integer", "minimum": 1, "maximum": 10 }
            }
        }),
    );
    schemas.insert(
        "Answer".into(),
        json!({
            "type": "object",
            "description": "An operation's outcome: its result (what --json prints), its text for people, warnings, and a failure when the result itself says something is wrong",
            "required": ["result", "text", "warnings", "failure", "renderings"],
            "properties": {
                "result": {},
                "text": { "type": "string" },
                "warnings": { "type": "array", "items": { "type": "string" } },
                "failure": { "nullable": true, "type": "object", "properties": { "code": { "type": "string" }, "message": { "type": "string" } } },
                "renderings": { "type": "object", "additionalProperties": { "type": "string" } }
            }
        }),
    );
    let context = json!({ "type": "object", "additionalProperties": { "type": "string" }, "description": "encryption context: pairs bound to the ciphertext" });
    let b64 = json!({ "type": "string", "format": "byte" });
    // A write sent again with the same key (a retry, on this server or
    // another of the deployment) is carried out once: the retry gets the
    // first answer (header x-custos-idempotency: replayed), 409 while the
    // first is still running or when its server died mid-way.
    let idempotency = json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "One key per request a client may send again: the request is carried out once",
        "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" }
    });
    let answer = json!({ "description": "the operation ran", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Answer" } } } });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Custos",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Encrypted datasets, their keys and their backups. Every operation the CLI has, run by the server that owns the vault; see docs/server.md."
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "basic": { "type": "http", "scheme": "basic", "description": "a principal's name and its passphrase or script token" }
            }
        },
        "security": [{ "basic": [] }],
        "paths": {
            "/v1/health": { "get": {
                "operationId": "health", "summary": "Liveness", "security": [],
                "responses": { "200": { "description": "serving (or draining)", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["status", "version"],
                    "properties": { "status": { "type": "string", "enum": ["ok", "draining"] }, "version": { "type": "string" } }
                } } } } }
            } },
            "/v1/openapi.json": { "get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": { "200": { "description": "the OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } } }
            } },
            "/metrics": { "get": {
                "operationId": "metrics", "summary": "Prometheus metrics", "security": [],
                "responses": { "200": { "description": "the text exposition format", "content": { "text/plain": { "schema": { "type": "string" } } } } }
            } },
            "/v1/ops": { "post": {
                "operationId": "operation", "summary": "Run any operation (what a CLI command is)",
                "parameters": [idempotency.clone()],
                "requestBody": json_body(operation),
                "responses": responses(answer.clone(), &[400, 401, 403, 404, 409, 422]),
            } },
            "/v1/datasets/{name}": {
                "parameters": [{ "name": "name", "in": "path", "required": true, "schema": dataset }],
                "put": {
                    "operationId": "ds_put", "summary": "Write a new generation; the body is the data, streamed",
                    "parameters": [
                        { "name": "key", "in": "query", "required": false, "schema": label },
                        { "name": "volume", "in": "query", "required": false, "schema": volume },
                        idempotency
                    ],
                    "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                    "responses": responses(answer, &[400, 401, 403, 404, 409, 422]),
                },
                "get": {
                    "operationId": "ds_get", "summary": "Read a dataset, streamed",
                    "parameters": [
                        { "name": "start", "in": "query", "required": false, "schema": { "type": "integer", "format": "int64", "minimum": 0 } },
                        { "name": "end", "in": "query", "required": false, "schema": { "type": "integer", "format": "int64", "minimum": 0 } }
                    ],
                    "responses": responses(
                        json!({ "description": "the data", "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } }),
                        &[400, 401, 403, 404],
                    ),
                }
            },
            "/v1/audit/export": { "get": {
                "operationId": "audit_export", "summary": "The audit log, one JSON object per line",
                "responses": responses(
                    json!({ "description": "the entries", "content": { "application/x-ndjson": { "schema": { "type": "string" } } } }),
                    &[401, 403],
                ),
            } },
            "/v1/keys/{label}/encrypt": key_service(
                "encrypt",
                json!({ "type": "object", "required": ["plaintext"], "additionalProperties": false, "properties": { "plaintext": b64, "context": context } }),
                &["key", "ciphertext"],
                &[400, 401, 403, 404],
            ),
            "/v1/keys/{label}/decrypt": key_service(
                "decrypt",
                json!({ "type": "object", "required": ["ciphertext"], "additionalProperties": false, "properties": { "ciphertext": b64, "context": context } }),
                &["key", "plaintext"],
                &[400, 401, 403, 404, 422],
            ),
            "/v1/keys/{label}/datakey": key_service(
                "datakey",
                json!({ "type": "object", "additionalProperties": false, "properties": { "bytes": { "type": "integer", "minimum": 16, "maximum": 64 }, "context": context } }),
                &["key", "plaintext", "ciphertext"],
                &[400, 401, 403, 404],
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the document the code generates. Run with
    /// CUSTOS_UPDATE_OPENAPI=1 to rewrite it after changing the API.
    #[test]
    fn the_checked_in_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let now = serde_json::to_string_pretty(&super::document()).unwrap() + "\n";
        if std::env::var_os("CUSTOS_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == now,
            "docs/openapi.json is stale: run `CUSTOS_UPDATE_OPENAPI=1 cargo test -p custos-server openapi`"
        );
    }
}
