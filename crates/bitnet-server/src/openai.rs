//! The OpenAI wire format: request and response bodies of
//! `/v1/chat/completions`, `/v1/completions` and `/v1/models`, and the
//! error body. Field names and shapes follow OpenAI's API reference;
//! fields a client may send that this server does not use are accepted and
//! ignored, as OpenAI itself does with fields it does not know.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `stop`: one string or a list of them.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Up to four stop strings.
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and limit fields shared by both completion endpoints.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct SamplingFields {
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<u64>,
    /// 0 to 2; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: Option<f32>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Choices to generate; only 1 is supported.
    pub n: Option<u32>,
    /// Strings that end the generation (not included in the text).
    pub stop: Option<StopField>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// -2 to 2: penalize tokens that appeared at all.
    pub presence_penalty: Option<f32>,
    /// -2 to 2: penalize tokens by how often they appeared.
    pub frequency_penalty: Option<f32>,
    /// A caller's end-user id (recorded, not used).
    pub user: Option<String>,
}

/// Message content: a string, or a list of parts of which text parts count.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ContentPart {
    /// `text` (other kinds are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// One chat message.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Its content (may be null for assistant tool calls, which are refused).
    pub content: Option<MessageContent>,
    /// A participant name (ignored).
    pub name: Option<String>,
}

/// `POST /v1/chat/completions` body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The model id from `/v1/models`.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessageIn>,
    /// Sampling and limits.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Return log-probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// 0 to 20 most likely tokens per position (needs `logprobs`).
    pub top_logprobs: Option<u32>,
}

/// `prompt`: a string, a list of one string, or token ids.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PromptField {
    /// Text.
    Text(String),
    /// A list of texts (one, since `n` and batching of prompts are 1).
    Texts(Vec<String>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// `POST /v1/completions` body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct CompletionRequest {
    /// The model id from `/v1/models`.
    pub model: String,
    /// The prompt.
    pub prompt: PromptField,
    /// Sampling and limits.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// 0 to 5 most likely tokens per position, with the chosen one's
    /// log-probability.
    pub logprobs: Option<u32>,
    /// Echo the prompt back before the completion (only `false`).
    #[serde(default)]
    pub echo: bool,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// A candidate token at one position (chat log-probabilities).
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One output token's log-probability (chat).
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// A chat choice's log-probabilities.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct ChatLogprobs {
    /// One entry per output token.
    pub content: Vec<TokenLogprob>,
}

/// The assistant's message.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChatMessageOut {
    /// `assistant`.
    pub role: String,
    /// The generated text.
    pub content: String,
}

/// One chat choice.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChatChoice {
    /// Always 0 (`n` is 1).
    pub index: u32,
    /// The answer.
    pub message: ChatMessageOut,
    /// Its log-probabilities, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// `POST /v1/chat/completions` answer (not streaming).
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
    /// Identifies the server build.
    pub system_fingerprint: String,
}

/// The new part of the assistant's message in a chunk.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One streamed chat choice.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    /// Always 0.
    pub index: u32,
    /// The new text.
    pub delta: ChatDelta,
    /// Log-probabilities of this chunk's tokens, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the last content chunk.
    pub finish_reason: Option<String>,
}

/// One server-sent event of a streamed chat completion.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// The same id in every chunk.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// In the last chunk when `stream_options.include_usage`; otherwise null.
    pub usage: Option<Usage>,
    /// Identifies the server build.
    pub system_fingerprint: String,
}

/// A completion choice's log-probabilities (the legacy layout).
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    /// The output tokens' texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// Per position, the most likely tokens and their log-probabilities.
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    /// Each token's offset in the text.
    pub text_offset: Vec<usize>,
}

/// One completion choice.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct CompletionChoice {
    /// Always 0.
    pub index: u32,
    /// The generated text (in a chunk: the new text).
    pub text: String,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length` (null in chunks before the last).
    pub finish_reason: Option<String>,
}

/// `POST /v1/completions` answer, and each streamed chunk of one.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct CompletionResponse {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (in a stream: only in the usage chunk).
    pub usage: Option<Usage>,
    /// Identifies the server build.
    pub system_fingerprint: String,
}

/// One model in `/v1/models`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ModelCard {
    /// The id to put in requests.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds when the server loaded it.
    pub created: u64,
    /// `bitnet-rust`.
    pub owned_by: String,
}

/// `GET /v1/models` answer.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The served models.
    pub data: Vec<ModelCard>,
}

/// The inside of an error body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for a person.
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, `rate_limit_error`,
    /// `server_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable machine-readable code, if there is one.
    pub code: Option<String>,
}

/// Every error answer: `{"error": {...}}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}
