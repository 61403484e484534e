//! The OpenAPI document, generated from the request and response types and
//! the handlers' annotations.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "BitNet-Rust OpenAI-compatible API",
        description = "Chat and text completions from a ternary (1.58-bit) model, with streaming."
    ),
    paths(
        crate::routes::chat_completions,
        crate::routes::completions,
        crate::routes::models,
        crate::routes::model,
        crate::routes::health,
        crate::routes::ready,
        crate::routes::metrics,
    ),
    components(schemas(
        crate::openai::ChatCompletionRequest,
        crate::openai::ChatCompletionResponse,
        crate::openai::ChatCompletionChunk,
        crate::openai::CompletionRequest,
        crate::openai::CompletionResponse,
        crate::openai::ModelList,
        crate::openai::ModelCard,
        crate::openai::ErrorBody,
    ))
)]
struct ApiDoc;

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
