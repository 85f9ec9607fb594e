//! JSON log lines: one object per event with timestamp, level, service, target, message, the
//! event's fields, the current span's name, and the OpenTelemetry `trace_id` / `span_id`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, format::Writer};
use tracing_subscriber::layer::Layer;
use tracing_subscriber::registry::LookupSpan;

/// Formats events as JSON. Reading a span's OpenTelemetry ids needs the dispatcher, which a
/// formatter is never given; the companion [`DispatchCapture`] layer records it at registration.
pub(crate) struct JsonFormat {
    service: &'static str,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

pub(crate) struct DispatchCapture(Arc<OnceLock<WeakDispatch>>);

impl JsonFormat {
    pub(crate) fn new(service: &'static str) -> (DispatchCapture, Self) {
        let dispatch = Arc::new(OnceLock::new());
        (
            DispatchCapture(dispatch.clone()),
            Self { service, dispatch },
        )
    }
}

impl<S: Subscriber> Layer<S> for DispatchCapture {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(
                time_rfc3339(std::time::SystemTime::now()).unwrap_or_else(|| "unknown".into()),
            ),
        );
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("service".into(), Value::from(self.service));
        line.insert("target".into(), Value::from(meta.target()));

        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        if let Some(message) = fields.remove("message") {
            line.insert("message".into(), message);
        }

        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), Value::from(span.name()));
            let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
            if let Some(cx) = dispatch
                .as_ref()
                .and_then(|d| tracing_opentelemetry::get_otel_context(&span.id(), d))
            {
                let otel_span = cx.span();
                let sc = otel_span.span_context();
                if sc.is_valid() {
                    line.insert("trace_id".into(), Value::from(sc.trace_id().to_string()));
                    line.insert("span_id".into(), Value::from(sc.span_id().to_string()));
                }
            }
        }
        for (key, value) in fields {
            line.entry(key).or_insert(value);
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// RFC 3339 UTC timestamp with milliseconds (`2026-11-18T11:06:40.123Z`); `None` before 1970.
pub fn time_rfc3339(now: std::time::SystemTime) -> Option<String> {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.duration_since(std::time::UNIX_EPOCH).ok()?;
    time::OffsetDateTime::from(now).format(FORMAT).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(time_rfc3339(t).as_deref(), Some("2026-11-18T11:06:40.123Z"));
        assert_eq!(
            time_rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)).as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
    }
}
