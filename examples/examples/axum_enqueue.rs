//! A web service whose request handler enqueues work: axum and a queue on one runtime.
//!
//! ```text
//! cargo run -p simplepyq-examples --example axum_enqueue [-- --serve]
//! ```
//!
//! `POST /thumbnails` with `{"path": "...", "width": N}` enqueues a thumbnail task through
//! the channel's typed handle and answers with the task's id; an async channel makes the
//! thumbnails on the same runtime. Without `--serve` the program sends itself a few
//! requests, waits for their tasks, and shuts down gracefully; with it, it serves on
//! 127.0.0.1:3000 until Ctrl-C.

use std::time::Duration;

use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use simplepyq::{Channel, SimplePyQ, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Serialize, Deserialize)]
struct Thumbnail {
    path: String,
    width: u32,
}

async fn make_thumbnail(t: Thumbnail) -> Result<(), simplepyq::TaskError> {
    tokio::time::sleep(Duration::from_millis(20)).await; // the resizing
    println!("thumbnail of {} at {} px made", t.path, t.width);
    Ok(())
}

/// The request handler: enqueueing is one short commit, and a typed handle checks the
/// arguments at compile time.
async fn enqueue(
    State(thumbnails): State<Channel<Thumbnail, SqliteStore>>,
    Json(t): Json<Thumbnail>,
) -> Result<String, (StatusCode, String)> {
    match thumbnails.enqueue(&t) {
        Ok(id) => Ok(format!("task {id}\n")),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// Sends one request over a plain TCP connection (no HTTP client needed for the demo).
async fn post_json(addr: std::net::SocketAddr, body: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST /thumbnails HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("web.db"))?;
    let thumbnails = q.add_channel_async("thumbnails", make_thumbnail, 16)?;
    q.start()?;

    let app = axum::Router::new()
        .route("/thumbnails", post(enqueue))
        .with_state(thumbnails);
    let addr = if serve {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    if serve {
        tokio::signal::ctrl_c().await?;
    } else {
        for (i, path) in ["cat.png", "dog.png", "owl.png"].iter().enumerate() {
            let body = format!(r#"{{"path": "{path}", "width": {}}}"#, 64 << i);
            let answer = post_json(addr, &body).await?;
            let status = answer.lines().next().unwrap_or_default().to_owned();
            assert!(status.contains("200"), "{answer}");
            println!(
                "POST {body} -> {}",
                answer.lines().last().unwrap_or_default()
            );
        }
        let bad = post_json(addr, r#"{"path": 3}"#).await?;
        println!(
            "a bad request is refused before anything is enqueued: {}",
            bad.lines().next().unwrap_or_default()
        );
        assert!(!bad.starts_with("HTTP/1.1 200"), "{bad}");
        q.run_until_complete_async().await?;
        assert_eq!(q.counts("thumbnails")?.done, 3);
    }

    let _ = stop_tx.send(());
    server.await??;
    q.stop_async().await;
    println!("served and stopped: {:?}", q.counts("thumbnails")?);
    Ok(())
}
