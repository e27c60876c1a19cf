//! Traces that cross the queue (feature `opentelemetry`): an enqueue stores the current
//! OpenTelemetry span's context with the task, as a W3C `traceparent`; the process that runs
//! the task makes the handler's span a child of it. Without the feature a task keeps only a
//! `traceparent` given in [`crate::EnqueueOptions::traceparent`], and no span is made.
//!
//! The handler's span is named `process {channel}`, of kind consumer, with the messaging
//! attributes of OpenTelemetry's semantic conventions (`messaging.system` = `simplepyq`,
//! `messaging.destination.name` = the channel, `messaging.message.id` = the task's id) and
//! `simplepyq.task.attempt`; it is current while the handler runs (a `tracing` span made in
//! the handler is its child through `tracing-opentelemetry`), and it ends with the outcome:
//! `simplepyq.outcome` is `succeeded`, `failed` or `delayed`, and a failure sets the span's
//! status to an error with the failure's message.

use simplepyq_core::{Outcome, Task};

/// The trace context to store with a task enqueued here now: the current OpenTelemetry
/// span's (a `tracing` span's through `tracing-opentelemetry`), if the feature is on and
/// there is one.
pub(crate) fn current() -> Option<String> {
    #[cfg(feature = "opentelemetry")]
    {
        otel::current()
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        None
    }
}

/// A handler's span, from just before the handler runs until its outcome is known. Nothing
/// without the feature.
#[derive(Debug)]
pub(crate) struct TaskSpan {
    #[cfg(feature = "opentelemetry")]
    cx: opentelemetry::Context,
}

impl TaskSpan {
    /// Starts the span of `task`'s current attempt, on `channel`.
    pub(crate) fn start(task: &Task, channel: &str) -> Self {
        #[cfg(not(feature = "opentelemetry"))]
        let _ = (task, channel);
        TaskSpan {
            #[cfg(feature = "opentelemetry")]
            cx: otel::start(task, channel),
        }
    }

    /// Runs `f` (the handler) with the span current.
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "opentelemetry")]
        let _current = self.cx.clone().attach();
        f()
    }

    /// `future` (an async handler's), with the span current whenever it is polled.
    #[cfg(feature = "tokio")]
    pub(crate) fn instrument(&self, future: crate::runner::BoxFuture) -> crate::runner::BoxFuture {
        #[cfg(feature = "opentelemetry")]
        {
            use opentelemetry::context::FutureExt;
            Box::pin(future.with_context(self.cx.clone()))
        }
        #[cfg(not(feature = "opentelemetry"))]
        future
    }

    /// Ends the span with the attempt's outcome.
    pub(crate) fn end(self, outcome: &Outcome) {
        #[cfg(feature = "opentelemetry")]
        otel::end(&self.cx, outcome);
        #[cfg(not(feature = "opentelemetry"))]
        let _ = outcome;
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer,
    };
    use opentelemetry::{Context, KeyValue, global};
    use simplepyq_core::{Outcome, Task};

    pub(super) fn current() -> Option<String> {
        Context::map_current(|cx| {
            let span = cx.span();
            let s = span.span_context();
            s.is_valid().then(|| {
                format!(
                    "00-{}-{}-{:02x}",
                    s.trace_id(),
                    s.span_id(),
                    s.trace_flags().to_u8()
                )
            })
        })
    }

    /// The remote span context of a stored `traceparent` (stores keep only valid ones).
    fn parse(traceparent: &str) -> Option<SpanContext> {
        let mut parts = traceparent.split('-').skip(1);
        let trace_id = TraceId::from_hex(parts.next()?).ok()?;
        let span_id = SpanId::from_hex(parts.next()?).ok()?;
        let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
        let s = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags),
            true,
            TraceState::NONE,
        );
        s.is_valid().then_some(s)
    }

    pub(super) fn start(task: &Task, channel: &str) -> Context {
        let parent = match task.traceparent.as_deref().and_then(parse) {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => Context::new(),
        };
        let tracer = global::tracer("simplepyq");
        let span = tracer
            .span_builder(format!("process {channel}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "simplepyq"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", channel.to_owned()),
                KeyValue::new("messaging.message.id", task.id.to_string()),
                KeyValue::new("simplepyq.task.attempt", i64::from(task.state.attempts)),
            ])
            .start_with_context(&tracer, &parent);
        parent.with_span(span)
    }

    pub(super) fn end(cx: &Context, outcome: &Outcome) {
        let span = cx.span();
        let name = match outcome {
            Outcome::Succeeded | Outcome::Returned(_) => "succeeded",
            Outcome::Delayed { .. } => "delayed",
            Outcome::Failed { error, .. } => {
                span.set_status(Status::error(error.clone()));
                "failed"
            }
        };
        span.set_attribute(KeyValue::new("simplepyq.outcome", name));
        span.end();
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_traceparent_reads_as_its_remote_span_context() {
            let s = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .expect("a valid traceparent");
            assert_eq!(
                format!("{}-{}", s.trace_id(), s.span_id()),
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
            );
            assert!(s.is_sampled() && s.is_remote());
            let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("a valid traceparent");
            assert!(!unsampled.is_sampled());
        }
    }
}
