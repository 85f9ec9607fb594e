//! Outgoing JSON calls between the services: `traceparent` injected, and the shared error body
//! `{"error": {"code", "message"}}` mapped to one error type, so every typed client (model-serving,
//! backend) classifies failures the same way.

use std::time::Duration;

use opentelemetry_http::HeaderInjector;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::retry::Transient;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Too many requests from this caller (429): the caller, not the service, must slow down.
    #[error("rate limited: {message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Overloaded, starting or down (502/503/504); try again after the given delay.
    #[error("service unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The input was refused (4xx); retrying will not help.
    #[error("request rejected ({status}, {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("service failed ({status}): {message}")]
    Server { status: u16, message: String },
    #[error("cannot reach the service: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The client was given settings it cannot use (found when it is made, not per call).
    #[error("client configuration: {0}")]
    Config(String),
}

impl CallError {
    /// Whether the same call may succeed later (overload, restart, network).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Unavailable { .. } | Self::Transport(_)
        )
    }
}

impl Transient for CallError {
    fn is_transient(&self) -> bool {
        CallError::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } | Self::RateLimited { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// Adds `traceparent` (and `tracestate`) for the current span to an outgoing request, so the
/// callee's spans join this trace.
pub fn inject(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let context = tracing::Span::current().context();
    let mut headers = http::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
    });
    request.headers(headers)
}

/// Sends `request` with the current trace context and decodes a JSON answer or the error body.
pub async fn send_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, CallError> {
    let response = inject(request).send().await.map_err(CallError::Transport)?;
    let status = response.status();
    if status.is_success() {
        return response
            .json::<T>()
            .await
            .map_err(|e| CallError::Decode(e.to_string()));
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v["error"][name].as_str())
            .map(str::to_owned)
    };
    let code = field("code").unwrap_or_else(|| "unknown".to_owned());
    let message = field("message").unwrap_or_else(|| body.chars().take(200).collect());
    Err(match status.as_u16() {
        429 => CallError::RateLimited {
            message,
            retry_after,
        },
        502..=504 => CallError::Unavailable {
            message,
            retry_after,
        },
        s @ 400..=499 => CallError::Rejected {
            status: s,
            code,
            message,
        },
        s => CallError::Server { status: s, message },
    })
}
