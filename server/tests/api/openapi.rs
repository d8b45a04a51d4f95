//! The OpenAPI document at `/api/v1/openapi.json`: it lists exactly the API's real routes
//! (as the router holds them, and as the live server answers them), it is a valid OpenAPI
//! 3.1 document by the specification's own schema, and every reference in it resolves.
//! Schemathesis runs against it in the end-to-end tests (`tests/tests/e2e/openapi.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::helpers::TestApp;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The document as the running server serves it.
async fn served_document(app: &TestApp) -> serde_json::Value {
    let response = reqwest::get(format!("{}/api/v1/openapi.json", app.client.base_url())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// Every (method, path) of the document, lowercase method and path as written there.
fn documented_operations(document: &serde_json::Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (method.to_string(), path.clone()))
        })
        .collect()
}

/// The routes the server's router really holds, read from its `Debug` form: axum has no
/// other way to list them. Each is a path and the methods of its `Allow` header, which is
/// what the router answers a 405 with, so the list is the router's own.
fn router_operations() -> BTreeSet<(String, String)> {
    let text = format!("{:?}", wasmgrid_server::http::routes());
    // The fallback router comes after the routes proper and holds none of ours.
    let routes = text.split("fallback_router:").next().unwrap();
    let (method_routers, node) = routes.split_once("node: Node { paths: {").expect("the Debug form lists paths");
    let mut allowed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for chunk in method_routers.split("RouteId(").skip(1) {
        let Some((route_id, rest)) = chunk.split_once("): MethodRouter(") else { continue };
        let methods = rest.split_once("allow_header: Bytes(b\"").and_then(|(_, rest)| rest.split_once('"'));
        let methods = methods.map_or("", |(methods, _)| methods);
        let methods = methods.split(',').filter(|method| !method.is_empty() && *method != "HEAD");
        allowed.insert(route_id, methods.map(str::to_lowercase).collect());
    }
    let mut operations = BTreeSet::new();
    let mut rest = node;
    while let Some((route_id, after)) = rest.strip_prefix("RouteId(").and_then(|rest| rest.split_once("): \"")) {
        let (path, after) = after.split_once('"').expect("a quoted path");
        for method in allowed.get(route_id).unwrap_or_else(|| panic!("route {route_id} ({path}) has methods")) {
            operations.insert((method.clone(), path.to_owned()));
        }
        rest = after.strip_prefix(", ").unwrap_or_default();
    }
    assert!(
        operations.contains(&("get".to_owned(), "/healthz".to_owned())) && operations.len() > 30,
        "the router's Debug form was not read: {operations:?}"
    );
    operations
}

/// The JSON API: `/api/...` and `/healthz`. Everything else is a web page.
fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/healthz"
}

#[tokio::test]
async fn every_api_route_is_in_the_document_and_the_document_has_no_other() {
    let app = TestApp::spawn().await;
    let document = served_document(&app).await;

    let routed: BTreeSet<_> = router_operations().into_iter().filter(|(_, path)| is_api(path)).collect();
    let documented = documented_operations(&document);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routes missing from the document: {undocumented:?}");
    assert!(unrouted.is_empty(), "documented operations the router does not have: {unrouted:?}");

    // And the live server answers each documented operation from a handler: neither the
    // fallback's 404 nor a 405.
    let http = reqwest::Client::new();
    for (method, path) in &documented {
        let url = format!("{}{}", app.client.base_url(), example_path(path));
        let response = http.request(method.to_uppercase().parse().unwrap(), &url).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        assert!(!body.contains("no such route"), "{method} {path} reached the fallback");
    }
}

/// `path` with each parameter filled in by a value of its type.
fn example_path(path: &str) -> String {
    path.replace("{sha256}", &"0".repeat(64))
        .replace("{id}", "1")
        .replace("{replica_id}", "1")
        .replace("{name}", "app")
        .replace("{file}", "users.json.gz")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_leaves_out_the_web_pages() {
    let app = TestApp::spawn().await;
    let document = served_document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(documented_operations(&document).iter().all(|(_, path)| is_api(path)));
    let schemes = document["components"]["securitySchemes"].as_object().unwrap();
    for scheme in ["account_key", "host_token", "publisher_token"] {
        assert_eq!(schemes[scheme]["type"], "http", "{scheme}");
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    // What the server serves is what it generates, not a copy that could fall behind.
    let generated = <wasmgrid_server::openapi::ApiDoc as utoipa::OpenApi>::openapi();
    assert_eq!(document, serde_json::to_value(&generated).unwrap());
}

/// Validated by `openapi-spec-validator` (from PyPI; `.ci/run` installs it), which checks a
/// document against the OpenAPI 3.1 specification's JSON Schema and follows every `$ref`.
#[tokio::test]
async fn the_document_is_valid_by_the_openapi_specification() {
    let app = TestApp::spawn().await;
    let document = served_document(&app).await;
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), serde_json::to_vec_pretty(&document).unwrap()).unwrap();

    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(file.path())
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named openapi_spec_validator"),
        "the validator is missing: python3 -m pip install openapi-spec-validator==0.9.0"
    );
    assert!(
        output.status.success(),
        "the document is not valid OpenAPI 3.1:\n{}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );

    // A document that breaks the specification is refused: the check can fail.
    let mut broken = document.clone();
    broken["paths"]["/healthz"]["get"]["responses"]["200"] = serde_json::json!({"content": 42});
    std::fs::write(file.path(), serde_json::to_vec(&broken).unwrap()).unwrap();
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "a broken document passed the validator");
}

#[tokio::test]
async fn every_reference_in_the_document_resolves() {
    let app = TestApp::spawn().await;
    let document = served_document(&app).await;
    let mut references = Vec::new();
    collect_references(&document, &mut references);
    assert!(references.len() > 50, "the document refers to its schemas: {}", references.len());
    for reference in references {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("{reference} is not local"));
        assert!(document.pointer(pointer).is_some(), "{reference} does not resolve");
    }
}

fn collect_references(value: &serde_json::Value, references: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(fields) => {
            if let Some(serde_json::Value::String(reference)) = fields.get("$ref") {
                references.push(reference.clone());
            }
            fields.values().for_each(|field| collect_references(field, references));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_references(item, references)),
        _ => {}
    }
}

/// The wire types whose serde is written by hand are described as what it writes.
#[tokio::test]
async fn hand_serialized_types_are_described_as_serde_writes_them() {
    use wasmgrid_protocol::Sha256Hash;
    use wasmgrid_protocol::signing::{PublicKey, sign_module};

    let app = TestApp::spawn().await;
    let document = served_document(&app).await;
    let schemas = &document["components"]["schemas"];
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let hash = Sha256Hash::of(b"module");
    let written = [
        ("Sha256Hash", serde_json::to_value(hash).unwrap()),
        ("PublicKey", serde_json::to_value(PublicKey::of(&key)).unwrap()),
        ("Signature", serde_json::to_value(sign_module(&key, &hash)).unwrap()),
    ];
    for (name, value) in written {
        let schema = &schemas[name];
        let text = value.as_str().unwrap_or_else(|| panic!("{name} is written as a string"));
        assert_eq!(schema["type"], "string", "{name}");
        let length = text.chars().count() as u64;
        assert_eq!(schema["minLength"].as_u64(), Some(length), "{name}");
        assert_eq!(schema["maxLength"].as_u64(), Some(length), "{name}");
        let pattern = schema["pattern"].as_str().unwrap();
        assert!(matches_pattern(pattern, text), "{name}: {text:?} does not match {pattern}");
    }
}

/// Whether `text` matches the JSON Schema `pattern`, by Python's `re` (Schemathesis's).
fn matches_pattern(pattern: &str, text: &str) -> bool {
    let output = Command::new("python3")
        .args(["-c", "import re, sys; sys.exit(0 if re.search(sys.argv[1], sys.argv[2]) else 1)", pattern, text])
        .output()
        .expect("python3 runs");
    output.status.success()
}

// What Schemathesis found, each tested the way it was found.

/// A query string the server cannot read is a 400 with the API's JSON error, as the
/// document says, not axum's plain-text rejection.
#[tokio::test]
async fn a_malformed_query_string_is_a_400_with_a_json_error() {
    let app = TestApp::spawn().await;
    for path in ["/api/v1/stats/users?page=first", "/api/v1/stats/teams?order=sideways", "/api/v1/stats/teams/1?page=x"]
    {
        let response = app.client.request(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json", "{path}");
        let error: wasmgrid_protocol::api::ErrorBody = response.json().await.unwrap();
        assert_eq!(error.error.code, "bad_request", "{path}");
    }
}

/// JSON has one kind of number, and JSON Schema's `integer` takes `2.0`: so does the server.
/// A number past what a float holds exactly is not rounded into range.
#[tokio::test]
async fn whole_numbers_written_as_floats_are_integers_and_out_of_range_ones_are_refused() {
    let app = TestApp::spawn().await;
    let volunteer = app.volunteer("v").await;
    let scheduler = |body: &'static str| {
        app.client
            .request(reqwest::Method::POST, "/api/v1/scheduler")
            .bearer_auth(&volunteer.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(scheduler(r#"{"want_replicas": 2.0, "held_replicas": [1e3]}"#).await.unwrap().status(), 200);
    for refused in [
        r#"{"want_replicas": 2.5}"#,
        r#"{"held_replicas": [-9223372036854775809]}"#,
        r#"{"want_replicas": 4294967296.0}"#,
    ] {
        assert_eq!(scheduler(refused).await.unwrap().status(), 400, "{refused}");
    }
}

/// A page larger than the largest is the largest, up to the largest number the document
/// allows (it had said nothing, and a larger one was refused).
#[tokio::test]
async fn any_results_page_size_the_document_allows_is_taken() {
    let app = TestApp::spawn().await;
    // The helpers publish as the publisher "tests".
    let published = app.publish_app(Vec::new(), Default::default()).await;
    let mut connection = app.pool.acquire().await.unwrap();
    let token = wasmgrid_server::publishers::create_token(&mut connection, Some("tests")).await.unwrap().token;
    for limit in ["0", "1000", "18446744073709551615"] {
        let path = format!("/api/v1/batches/{}/results?limit={limit}", published.batch_id);
        let response = app.client.request(reqwest::Method::GET, &path).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{limit}");
    }
    let document = served_document(&app).await;
    let parameters = document["paths"]["/api/v1/batches/{id}/results"]["get"]["parameters"].as_array().unwrap();
    let limit = parameters.iter().find(|parameter| parameter["name"] == "limit").unwrap();
    assert_eq!(limit["schema"]["maximum"].as_u64(), Some(u64::MAX));
    let path = format!("/api/v1/batches/{}/results?limit=18446744073709551616", published.batch_id);
    let response = app.client.request(reqwest::Method::GET, &path).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 400);
}
