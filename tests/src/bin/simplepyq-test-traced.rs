//! A worker process for the test of traces across the queue.
//!
//! `simplepyq-test-traced BACKEND DB` runs channel `mail` of the queue (BACKEND `sqlite`
//! with DB its file; `postgres` with DB its schema on the server `SIMPLEPYQ_TEST_POSTGRES`
//! names) until nothing is left to do, with the `opentelemetry` feature, an OpenTelemetry SDK
//! tracer provider that keeps ended spans in memory as the global one, and a `tracing`
//! subscriber bridged to it by `tracing-opentelemetry`. Its handler makes a `tracing` span
//! `send` and fails a task whose argument is `"fail"`. At the end it prints each span it
//! ended as a line of JSON: name, trace id, span id, parent span id, status and attributes.
//! It exits 0 when done, 1 on bad usage or an error.

use std::process::ExitCode;

use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use simplepyq::{PostgresOptions, PostgresStore, SimplePyQ, SqliteStore, Store, TaskError};
use tracing_subscriber::layer::SubscriberExt;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, db] = args.as_slice() else {
        eprintln!("usage: simplepyq-test-traced BACKEND DB");
        return ExitCode::from(1);
    };
    match run(backend, db) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(backend: &str, db: &str) -> Result<(), Box<dyn std::error::Error>> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("handlers")));
    tracing::subscriber::set_global_default(subscriber)?;

    let store: Box<dyn Store> = match backend {
        "sqlite" => Box::new(SqliteStore::open(db)?),
        "postgres" => {
            let server = std::env::var("SIMPLEPYQ_TEST_POSTGRES")?;
            Box::new(PostgresStore::connect_with(
                &server,
                PostgresOptions::new().schema(db),
            )?)
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    };
    let q = SimplePyQ::new(store);
    q.add_channel(
        "mail",
        |to: String| {
            let _send = tracing::info_span!("send", to = %to).entered();
            if to == "fail" {
                return Err(TaskError::msg("the mail server said no"));
            }
            Ok(())
        },
        2,
    )?;
    q.run_until_complete()?;
    q.stop();
    provider.force_flush()?;
    for span in exporter.get_finished_spans()? {
        let status = match &span.status {
            Status::Unset => "unset".to_owned(),
            Status::Ok => "ok".to_owned(),
            Status::Error { description } => format!("error: {description}"),
        };
        let attributes: serde_json::Map<String, serde_json::Value> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string().into()))
            .collect();
        let line = serde_json::json!({
            "name": span.name,
            "trace_id": span.span_context.trace_id().to_string(),
            "span_id": span.span_context.span_id().to_string(),
            "parent_span_id": span.parent_span_id.to_string(),
            "status": status,
            "attributes": attributes,
        });
        println!("{line}");
    }
    Ok(())
}
