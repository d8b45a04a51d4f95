//! The OpenAPI 3.1 document of the JSON API, served at `GET /api/v1/openapi.json`.
//!
//! Nothing in it is written by hand: each handler's `#[utoipa::path]` gives its route,
//! parameters, body, answers and secret, and the wire types of `wasmgrid_protocol` derive
//! their schemas (with its `openapi` feature). [`ApiDoc`] gathers the handlers; the modifiers
//! below add what the shared layers and extractors answer on every route that uses them, so
//! that no handler has to repeat it and none can leave it out.
//!
//! The web site's pages (HTML) are not part of the API and are left out.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use wasmgrid_protocol::api::ErrorBody;

use crate::http::AppState;

/// The bearer secrets of the API, as the security schemes the operations name.
pub const ACCOUNT_KEY: &str = "account_key";
pub const HOST_TOKEN: &str = "host_token";
pub const PUBLISHER_TOKEN: &str = "publisher_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wasmgrid",
        description = "The JSON API of a wasmgrid project server: volunteers' accounts, hosts and scheduler \
            requests, the publishing API of scientists, module signing keys, content-addressed blobs and the \
            public statistics.\n\nErrors are `ErrorBody` JSON. A 503 (the database cannot be reached, or the \
            server is busy) and a 507 (no room for an upload) carry `Retry-After`, as does a 429.\n\nThis \
            document is generated from the server's handlers and wire types. It covers the API under `/api/v1` \
            and `/healthz`; the web site's HTML pages (`/`, the leaderboards, account pages, `/contribute` \
            and its form posts) are not part of the API and are left out.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::http::health,
        openapi_json,
        crate::accounts::create_account_handler,
        crate::accounts::register_host_handler,
        crate::work_fetch::scheduler_request,
        crate::signing::clear_refusals,
        crate::blobs::download::get_blob,
        crate::blobs::upload::put_output,
        crate::publishing::http::create_app,
        crate::publishing::http::list_apps,
        crate::publishing::http::get_app,
        crate::publishing::http::publish_version,
        crate::publishing::http::missing_files,
        crate::publishing::http::put_file,
        crate::publishing::http::create_batch,
        crate::publishing::http::list_batches,
        crate::publishing::http::batch_status,
        crate::publishing::http::delete_batch,
        crate::publishing::http::add_work_units,
        crate::publishing::http::close_batch,
        crate::publishing::http::batch_results,
        crate::publishing::http::cancel_batch,
        crate::signing::register_key,
        crate::signing::own_keys,
        crate::signing::project_keys,
        crate::stats::totals_handler,
        crate::stats::users_handler,
        crate::stats::teams_handler,
        crate::stats::hosts_handler,
        crate::stats::user_handler,
        crate::stats::team_handler,
        crate::stats::host_handler,
        crate::stats::status_handler,
        crate::stats::export::export_handler,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes, &SharedAnswers, &UnsignedBounds),
    tags(
        (name = "server", description = "The server itself: health and this document."),
        (name = "volunteers", description = "Volunteers' accounts and hosts, and the scheduler request that \
            reports finished replicas and hands out new ones."),
        (name = "blobs", description = "Content-addressed modules, inputs and outputs."),
        (name = "publishing", description = "Scientists' apps, versions, files and batches."),
        (name = "signing", description = "Publishers' signing keys, which volunteers' clients pin."),
        (name = "statistics", description = "The project's public statistics."),
    ),
)]
pub struct ApiDoc;

/// The document, made once.
static DOCUMENT_JSON: LazyLock<String> =
    LazyLock::new(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes"));

pub fn router() -> Router<AppState> {
    Router::new().route(&format!("{}/openapi.json", wasmgrid_protocol::API_PREFIX), get(openapi_json))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "server",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json")),
)]
async fn openapi_json() -> Response {
    let mut response = DOCUMENT_JSON.as_str().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The three bearer secrets: each is `Authorization: Bearer <secret>`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let schemes = [
            (ACCOUNT_KEY, "A volunteer account's key (`wga_...`), given once when the account is created."),
            (HOST_TOKEN, "A host's token (`wgh_...`), given once when the host is registered."),
            (PUBLISHER_TOKEN, "A publisher's token, made by the operator (`wasmgrid-server token create`)."),
        ];
        for (name, description) in schemes {
            let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// What the layers and extractors around the handlers answer, added to every operation that
/// passes through them:
/// - a secret ([`crate::http::extract`]): 401 without a valid one, 403 for a banned host or
///   account, or a volunteer's secret where a publisher's is needed;
/// - a JSON body (`ApiJson`): 400 when it does not parse, 413 past the body limit;
/// - path or query parameters (`ApiPath`, `ApiQuery`) and the NUL check on every URL: 400;
/// - the database (every route but `/healthz` and this document): 503 with `Retry-After`
///   while it cannot be reached or has no connection free.
struct SharedAnswers;

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let needs_database = path != "/healthz" && !path.ends_with("/openapi.json");
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                add_shared_answers(operation, needs_database);
            }
        }
    }
}

fn add_shared_answers(operation: &mut Operation, needs_database: bool) {
    let has_secret = operation.security.as_ref().is_some_and(|requirements| !requirements.is_empty());
    let has_json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|body| body.content.keys().any(|content_type| content_type == "application/json"));
    let has_parameters = operation.parameters.as_ref().is_some_and(|parameters| {
        parameters.iter().any(|parameter| matches!(parameter.parameter_in, ParameterIn::Path | ParameterIn::Query))
    });
    let mut answers = Vec::new();
    if has_json_body {
        answers.push(("400", "The body is not JSON of the expected shape, or a value in it is refused."));
        answers.push(("413", "The body is larger than the limit (1 MiB for JSON)."));
    }
    if has_parameters {
        answers.push(("400", "A path or query parameter is malformed."));
    }
    if has_secret {
        answers.push(("401", "The secret is missing, malformed or unknown."));
        answers.push((
            "403",
            "The host or account is banned from the project, or a volunteer's secret was sent where a \
             publisher's is needed.",
        ));
    }
    if needs_database {
        answers.push(("503", "The database cannot be reached, or the server is busy: retry after `Retry-After`."));
    }
    for (status, description) in answers {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(error_response(description, status == "503")));
    }
}

/// An `ErrorBody` answer, with `Retry-After` when it advises a wait.
pub fn error_response(description: &str, retry_after: bool) -> utoipa::openapi::Response {
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let mut response = ResponseBuilder::new().description(description).content("application/json", body);
    if retry_after {
        let seconds = HeaderBuilder::new()
            .schema(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Integer))
            .description(Some("Seconds to wait before trying again."))
            .build();
        response = response.header("Retry-After", seconds);
    }
    response.build()
}

/// Bytes as they are: a module, an input file, an output archive, an export.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// Unsigned integers (`format: uint32`, `uint64`) get the bound of their Rust type, which
/// is what serde takes: without it a reader would assume none, or, from utoipa's default
/// formats, the bound of a signed integer.
struct UnsignedBounds;

impl Modify for UnsignedBounds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.schemas.values_mut().for_each(bound_unsigned);
        }
        for item in openapi.paths.paths.values_mut() {
            let operations =
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    parameter.schema.iter_mut().for_each(bound_unsigned);
                }
            }
        }
    }
}

fn bound_unsigned(schema: &mut RefOr<utoipa::openapi::schema::Schema>) {
    use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, KnownFormat, Schema, SchemaFormat};
    let RefOr::T(schema) = schema else { return };
    match schema {
        Schema::Object(object) => {
            let unsigned = match &object.format {
                Some(SchemaFormat::KnownFormat(KnownFormat::UInt32)) => Some(("uint32", u64::from(u32::MAX))),
                Some(SchemaFormat::KnownFormat(KnownFormat::UInt64)) => Some(("uint64", u64::MAX)),
                _ => None,
            };
            if let Some((format, maximum)) = unsigned {
                // utoipa spells these formats `u-int32` and `u-int64`; the OpenAPI format
                // registry's names are `uint32` and `uint64`.
                object.format = Some(SchemaFormat::Custom(format.to_owned()));
                object.maximum.get_or_insert(utoipa::Number::UInt(maximum as usize));
            }
            object.properties.values_mut().for_each(bound_unsigned);
            if let Some(additional) = object.additional_properties.as_deref_mut()
                && let AdditionalProperties::RefOr(schema) = additional
            {
                bound_unsigned(schema);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                bound_unsigned(items);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(bound_unsigned),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(bound_unsigned),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}
