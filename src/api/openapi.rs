//! The OpenAPI 3.1 description, generated from the handlers' `#[utoipa::path]` annotations
//! and the types' `ToSchema` derives: it cannot drift from the code it describes.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{admin, docs};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tandem", description = "Documents API of the Tandem collaboration server. With access control on, every endpoint takes `Authorization: Bearer TOKEN`."),
    paths(
        docs::list, docs::metadata, docs::delete, docs::get_update, docs::post_update,
        docs::get_content, docs::put_content, docs::post_content, docs::identity,
        admin::revoke, admin::webhooks, admin::drop_webhooks,
    ),
    components(schemas(crate::content::Format, super::docs::Mode)),
    modifiers(&Bearer),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}

/// The description as JSON (built once per process).
pub(crate) fn json() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into()))
}

/// `GET /api/openapi.json`.
pub(crate) async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}
