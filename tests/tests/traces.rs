//! Traces across the queue (the `opentelemetry` feature): the span of an enqueue in one
//! process and the handler's span in another share the trace, the handler's span being the
//! enqueuer's child. A binary of its own, since it installs the process's global tracer
//! provider (an OpenTelemetry SDK one that keeps ended spans in memory).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, Tracer, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use parking_lot::Mutex;
use simplepyq::{
    ChannelOptions, EnqueueOptions, Error, MemoryStore, PostgresOptions, PostgresStore, SimplePyQ,
    SqliteStore, Store, TaskId,
};
use simplepyq_tests::postgres::{DropSchema, fresh_schema, server};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const TRACED: &str = env!("CARGO_BIN_EXE_simplepyq-test-traced");

/// The process's tracer provider and what it exported.
fn provider() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static PROVIDER: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        (provider, exporter)
    })
}

/// A span as the worker process printed it.
#[derive(Debug)]
struct Printed {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    status: String,
    attributes: BTreeMap<String, String>,
}

fn printed(line: &str) -> Printed {
    let v: serde_json::Value = serde_json::from_str(line).expect("a span as JSON");
    let text = |key: &str| v[key].as_str().expect(key).to_owned();
    Printed {
        name: text("name"),
        trace_id: text("trace_id"),
        span_id: text("span_id"),
        parent_span_id: text("parent_span_id"),
        status: text("status"),
        attributes: v["attributes"]
            .as_object()
            .expect("attributes")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("a value").to_owned()))
            .collect(),
    }
}

/// Enqueues two tasks inside a span (one to fail) and one outside any, on `store`; runs
/// them in a worker process (`backend`, `db`); checks that each handler's span continues the
/// trace of its enqueue, as a child of the enqueuer's span, with the task's id, channel,
/// attempt and outcome, and that a `tracing` span in the handler is its child.
/// `conninfo` names the PostgreSQL server of a `postgres` backend.
fn crosses_processes(store: Box<dyn Store>, backend: &str, db: &str, conninfo: &str) {
    provider();
    let q = SimplePyQ::new(store);
    let tracer = global::tracer("shop");
    let checkout = Context::current_with_span(tracer.start("checkout"));
    let (ok, fail) = {
        let _current = checkout.clone().attach();
        let ok = q.enqueue("mail", &"a@example.com").expect("enqueue");
        let fail = q.enqueue("mail", &"fail").expect("enqueue");
        (ok, fail)
    };
    checkout.span().end();
    let untraced = q.enqueue("mail", &"b@example.com").expect("enqueue");
    let producer = checkout.span().span_context().clone();
    let traceparent = format!("00-{}-{}-01", producer.trace_id(), producer.span_id());
    let stored = |id: TaskId| q.task(id).expect("task").expect("kept").traceparent;
    assert_eq!(stored(ok).as_deref(), Some(traceparent.as_str()));
    assert_eq!(stored(fail).as_deref(), Some(traceparent.as_str()));
    assert_eq!(stored(untraced), None, "enqueued outside any span");

    let out = Command::new(TRACED)
        .args([backend, db])
        .env(simplepyq_tests::postgres::SERVER_VAR, conninfo)
        .output()
        .expect("the worker process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans: Vec<Printed> = stdout.lines().map(printed).collect();
    let handled: BTreeMap<String, &Printed> = spans
        .iter()
        .filter(|s| s.name == "process mail")
        .map(|s| (s.attributes["messaging.message.id"].clone(), s))
        .collect();
    assert_eq!(handled.len(), 3, "{spans:#?}");
    for (id, outcome) in [(ok, "succeeded"), (fail, "failed")] {
        let s = handled[&id.to_string()];
        assert_eq!(s.trace_id, producer.trace_id().to_string(), "{s:?}");
        assert_eq!(s.parent_span_id, producer.span_id().to_string(), "{s:?}");
        assert_eq!(s.attributes["messaging.system"], "simplepyq");
        assert_eq!(s.attributes["messaging.destination.name"], "mail");
        assert_eq!(s.attributes["simplepyq.task.attempt"], "1");
        assert_eq!(s.attributes["simplepyq.outcome"], outcome);
    }
    assert_eq!(
        handled[&fail.to_string()].status,
        "error: the mail server said no"
    );
    assert_eq!(handled[&ok.to_string()].status, "unset");
    let root = handled[&untraced.to_string()];
    assert_ne!(root.trace_id, producer.trace_id().to_string());
    assert_eq!(root.parent_span_id, SpanId::INVALID.to_string(), "a root");
    // The handlers' `tracing` spans, through tracing-opentelemetry, are children of theirs.
    let sends: Vec<&Printed> = spans.iter().filter(|s| s.name == "send").collect();
    assert_eq!(sends.len(), 3, "{spans:#?}");
    for send in sends {
        let parent = handled
            .values()
            .find(|h| h.span_id == send.parent_span_id)
            .unwrap_or_else(|| panic!("{send:?} is no handler span's child"));
        assert_eq!(send.trace_id, parent.trace_id);
    }
}

#[test]
fn a_handlers_span_continues_the_enqueuers_trace_in_another_process_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).expect("open");
    let db = path.to_str().expect("a UTF-8 path");
    crosses_processes(Box::new(store), "sqlite", db, "");
}

#[test]
fn a_handlers_span_continues_the_enqueuers_trace_in_another_process_postgres() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store =
        PostgresStore::connect_with(server().conninfo(), PostgresOptions::new().schema(&schema))
            .expect("connect");
    crosses_processes(Box::new(store), "postgres", &schema, server().conninfo());
}

/// A `tracing` span of the enqueuer (through tracing-opentelemetry) is the parent of an async
/// handler's span, which stays current in the handler's future across its awaits.
#[test]
fn an_async_handler_continues_a_tracing_span() {
    let (provider, exporter) = provider();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("orders")));
    let q = SimplePyQ::new(MemoryStore::new());
    let (id, order) = tracing::subscriber::with_default(subscriber, || {
        let order = tracing::info_span!("order");
        let _entered = order.enter();
        let id = q.enqueue("jobs", &7u32).expect("enqueue");
        (id, order.context().span().span_context().clone())
    });
    assert!(
        order.is_valid(),
        "the tracing span has an OpenTelemetry context"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seen = Arc::new(Mutex::new(Vec::<(TraceId, SpanId)>::new()));
    let s = Arc::clone(&seen);
    q.add_channel_async_with(
        "jobs",
        move |_: u32| {
            let s = Arc::clone(&s);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let current = Context::map_current(|cx| cx.span().span_context().clone());
                s.lock().push((current.trace_id(), current.span_id()));
                Ok::<(), simplepyq::TaskError>(())
            }
        },
        ChannelOptions::new(2).runtime(rt.handle().clone()),
    )
    .expect("add");
    q.run_until_complete().expect("run");
    q.stop();
    provider.force_flush().expect("flush");
    let handler: SpanData = exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .find(|s| {
            s.name == "process jobs"
                && s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "messaging.message.id"
                        && kv.value.to_string() == id.to_string()
                })
        })
        .expect("the handler's span");
    assert_eq!(handler.span_context.trace_id(), order.trace_id());
    assert_eq!(handler.parent_span_id, order.span_id());
    assert_eq!(
        *seen.lock(),
        vec![(order.trace_id(), handler.span_context.span_id())],
        "the handler's span is current in its future after an await"
    );
}

/// A trace context given by the caller is kept and read by the handler; a malformed one is
/// a clear error at the enqueue, and nothing is added.
#[test]
fn a_given_traceparent_is_kept_and_a_malformed_one_refused() {
    let q = SimplePyQ::new(MemoryStore::new());
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let id = q
        .enqueue_with("jobs", &1u32, EnqueueOptions::new().traceparent(given))
        .expect("enqueue");
    let read = Arc::new(Mutex::new(None));
    let r = Arc::clone(&read);
    q.add_channel(
        "jobs",
        move |_: u32, ctx: &simplepyq::TaskContext| {
            *r.lock() = ctx.traceparent().map(str::to_owned);
            Ok(())
        },
        1,
    )
    .expect("add");
    q.run_until_complete().expect("run");
    assert_eq!(read.lock().as_deref(), Some(given));
    assert_eq!(
        q.task(id)
            .expect("task")
            .expect("kept")
            .traceparent
            .as_deref(),
        Some(given)
    );
    let bad = q.enqueue_with("jobs", &2u32, EnqueueOptions::new().traceparent("00-nope"));
    assert!(
        matches!(&bad, Err(Error::InvalidConfig(m)) if m.contains("traceparent")),
        "{bad:?}"
    );
    assert_eq!(q.counts("jobs").expect("counts").total(), 1);
    q.stop();
}
