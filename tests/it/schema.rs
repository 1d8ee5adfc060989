//! What the OpenAPI document says of an answer, checked: [`documented`] asserts that a body a
//! route answered is what `docs/openapi.json` documents for that route and status. Tests that
//! produce an answer call it, so the document cannot drift from what the daemon sends.

use std::sync::OnceLock;

use serde_json::Value;

use crate::harness::repo;

/// The committed OpenAPI document.
pub fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::from_str(&std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap())
            .unwrap()
    })
}

/// Asserts that `body`, answered with `status` to `method` (`get`, `post`, …) on `path` (the
/// documented template, e.g. `/api/v1/displays/{id}`), is what the document describes.
pub fn documented(method: &str, path: &str, status: u16, body: &Value) {
    let doc = doc();
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} answered {status} with a body the document does not describe: {body}"
    );
    if let Err(e) = conforms(doc, schema, body, &format!("{method} {path} {status}")) {
        panic!("{e}\n{body:#}");
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    }
}

/// Whether `v` is what `schema` (OpenAPI 3.1, a JSON Schema subset: `$ref`, `type` (one or a
/// list), `properties`, `required`, `items`, `oneOf`, `anyOf`, `allOf`, `enum`) allows. Objects
/// are closed: a key the schema does not name is a difference too, so an answer cannot carry
/// what its documentation leaves out. `at` names the place in messages.
pub fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        assert!(!target.is_null(), "{at}: no schema {r}");
        return conforms(doc, target, v, at);
    }
    for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(alts) = schema[key].as_array() {
            let fits: Vec<String> = alts
                .iter()
                .filter_map(|s| conforms(doc, s, v, at).err())
                .collect();
            let matched = alts.len() - fits.len();
            return match (matched, exactly_one) {
                (1, _) => Ok(()),
                (n, false) if n > 0 => Ok(()),
                (0, _) => Err(format!("{at}: matches none of {key}: {}", fits.join(" | "))),
                (n, _) => Err(format!("{at}: matches {n} of oneOf")),
            };
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        // A struct with a flattened part: its parts' properties together make one closed
        // object (each part alone would call the other's keys undocumented).
        let parts: Vec<&Value> = all.iter().map(|s| resolve(doc, s)).collect();
        if parts.iter().all(|p| p["properties"].is_object()) {
            let mut props = serde_json::Map::new();
            let mut required = Vec::new();
            for p in &parts {
                props.extend(p["properties"].as_object().unwrap().clone());
                required.extend(p["required"].as_array().cloned().unwrap_or_default());
            }
            let merged =
                serde_json::json!({"type": "object", "properties": props, "required": required});
            return conforms(doc, &merged, v, at);
        }
        for s in all {
            conforms(doc, s, v, at)?;
        }
        return Ok(());
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {values:?}"));
    }
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| *t == kind || (*t == "number" && kind == "integer"))
    {
        return Err(format!("{at}: {kind} where the schema says {types:?}"));
    }
    match v {
        Value::Object(o) => {
            let props = schema["properties"].as_object();
            for k in schema["required"].as_array().into_iter().flatten() {
                let k = k.as_str().unwrap();
                if !o.contains_key(k) {
                    return Err(format!("{at}: required {k:?} is missing"));
                }
            }
            let extra = &schema["additionalProperties"];
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => conforms(doc, s, x, &format!("{at}.{k}"))?,
                    // A map: every value against its schema.
                    None if extra.is_object() => conforms(doc, extra, x, &format!("{at}.{k}"))?,
                    None if props.is_some() => {
                        return Err(format!("{at}: {k:?} is not documented"));
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Value::Array(a) => {
            if schema["items"].is_object() {
                for (i, x) in a.iter().enumerate() {
                    conforms(doc, &schema["items"], x, &format!("{at}[{i}]"))?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[test]
fn the_schema_checker_itself_tells_apart() {
    let doc = serde_json::json!({"components": {"schemas": {
        "A": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer"}, "note": {"type": ["string", "null"]},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "kind": {"oneOf": [{"type": "object", "required": ["x"], "properties": {"x": {"type": "string"}}},
                               {"type": "object", "required": ["y"], "properties": {"y": {"type": "string"}}}]}}}}}});
    let a = serde_json::json!({"$ref": "#/components/schemas/A"});
    let ok = |v: Value| conforms(&doc, &a, &v, "a");
    assert!(ok(serde_json::json!({"id": 1, "note": null})).is_ok());
    assert!(ok(serde_json::json!({"id": 1, "kind": {"y": "z"}})).is_ok());
    assert!(
        ok(serde_json::json!({"note": "x"}))
            .unwrap_err()
            .contains("required")
    );
    assert!(
        ok(serde_json::json!({"id": "1"}))
            .unwrap_err()
            .contains("string where")
    );
    assert!(
        ok(serde_json::json!({"id": 1, "extra": 2}))
            .unwrap_err()
            .contains("not documented")
    );
    assert!(
        ok(serde_json::json!({"id": 1, "kind": {"z": 1}}))
            .unwrap_err()
            .contains("none of")
    );
    // A map's values are checked against its value schema.
    assert!(ok(serde_json::json!({"id": 1, "counts": {"sent": 2}})).is_ok());
    assert!(
        ok(serde_json::json!({"id": 1, "counts": {"sent": "2"}}))
            .unwrap_err()
            .contains("string where")
    );
    // A flattened part (allOf): the parts' keys together, closed, each part's required.
    let b = serde_json::json!({"allOf": [{"$ref": "#/components/schemas/A"},
        {"type": "object", "required": ["up"], "properties": {"up": {"type": "boolean"}}}]});
    let ok = |v: Value| conforms(&doc, &b, &v, "b");
    assert!(ok(serde_json::json!({"id": 1, "up": true})).is_ok());
    assert!(
        ok(serde_json::json!({"id": 1}))
            .unwrap_err()
            .contains("required \"up\"")
    );
    assert!(
        ok(serde_json::json!({"up": true}))
            .unwrap_err()
            .contains("required \"id\"")
    );
    assert!(
        ok(serde_json::json!({"id": 1, "up": true, "other": 0}))
            .unwrap_err()
            .contains("not documented")
    );
}
