//! `simplepyq serve`: a web dashboard of a queue, and its metrics for Prometheus.
//!
//! The HTTP server is axum (the tokio project's framework; the library's async examples
//! use it already): routing, JSON and a middleware layer in a few lines, on hyper. The
//! page, its script and its style sheet are compiled into the binary; the script draws
//! everything from the JSON API with `textContent` and DOM nodes, never HTML strings, so a
//! value that came from a task (arguments, errors, channel names) shows as text. A content
//! security policy allows no script but the page's own.
//!
//! Access: every request passes [`guard`]. With a token (`--token`, required to bind an
//! address other than loopback), a request carries it as `Authorization: Bearer`, as the
//! cookie the dashboard sets, or once as `?token=` in the address bar. Without one, only
//! requests naming a loopback host are served (no other web site can reach the dashboard
//! through a DNS name of its own). Actions are POSTs carrying the page's CSRF token, a
//! random value made at start; `--read-only` serves none and opens the store read-only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Json, Path, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use simplepyq::{Finished, ListFilter, Status, Store, TaskId, Timestamp};
use simplepyq_core::{Error, StoreExt};

use crate::prometheus;
use crate::view::{now, result_json, summary_json, task_json};

const PAGE: &str = include_str!("serve/index.html");
const SCRIPT: &str = include_str!("serve/app.js");
const STYLE: &str = include_str!("serve/style.css");

/// The cookie a browser keeps the token in after `?token=`.
const COOKIE: &str = "simplepyq_token";
/// The failed tasks the overview lists.
const FAILED_SHOWN: usize = 50;
/// The channels one page of the overview shows (their counts are asked channel by channel).
const CHANNELS_SHOWN: usize = 100;
/// How long an overview is served again to every tab instead of asking the store: with any
/// number of open tabs, the store answers at most one overview a second.
const OVERVIEW_FRESH: Duration = Duration::from_secs(1);
/// How often the chart counts the last two minutes again when there are more channels than
/// a page shows (it then counts all channels at once, which reads every done task's index
/// entry on SQLite).
const WIDE_CHART_EVERY: Duration = Duration::from_secs(10);
/// The longest arguments the overview shows of a failed task (as JSON text); the task's
/// page shows them whole.
const ARGS_PREVIEW: usize = 300;
/// The chart's buckets: minutes, an hour of them.
const MINUTE: Duration = Duration::from_secs(60);
const MINUTES: i64 = 60;

/// How to serve.
#[derive(Debug)]
pub(crate) struct Options {
    /// Where to listen.
    pub(crate) addr: SocketAddr,
    /// The token every request must carry, if any.
    pub(crate) token: Option<String>,
    /// Serve no actions.
    pub(crate) read_only: bool,
}

struct App {
    store: Arc<dyn Store>,
    token: Option<String>,
    csrf: String,
    read_only: bool,
    chart: Mutex<Chart>,
    /// The last overview of each page asked for (by the channel it starts after), and when.
    overviews: Mutex<BTreeMap<String, (Instant, Value)>>,
}

/// The chart's minutes, kept between requests: each request counts again only the last two
/// minutes, and the whole hour at most a minute after the last full count (or after an
/// action of the dashboard's). Counting the hour on every request would read every task
/// finished in it, each second.
#[derive(Default)]
struct Chart {
    counted_at: Option<Instant>,
    /// When the last two minutes were last counted.
    recent_at: Option<Instant>,
    minutes: BTreeMap<Timestamp, Finished>,
}

impl Chart {
    /// The minutes of the hour up to `now`'s, oldest first (none left out), of the tasks
    /// of every channel: with no more than a page of them, asked one channel at a time (the
    /// SQLite store's indexes of done tasks lead with the channel); with more, all at once,
    /// and the last two minutes at most every [`WIDE_CHART_EVERY`].
    fn update(
        &mut self,
        store: &dyn Store,
        channels: &[String],
        now: Timestamp,
    ) -> Result<Vec<Finished>, Error> {
        let current = Finished::bucket_of(now, MINUTE).as_millis();
        let first = Timestamp::from_millis(current - (MINUTES - 1) * 60_000);
        let wide = channels.len() > CHANNELS_SHOWN;
        let fresh = self
            .counted_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60));
        let since = if fresh {
            if wide
                && self
                    .recent_at
                    .is_some_and(|at| at.elapsed() < WIDE_CHART_EVERY)
            {
                return Ok(self.hour(first));
            }
            Timestamp::from_millis(current - 60_000)
        } else {
            self.counted_at = Some(Instant::now());
            first
        };
        self.recent_at = Some(Instant::now());
        self.minutes
            .retain(|&bucket, _| bucket >= first && bucket < since);
        let mut rows = Vec::new();
        let asked: Vec<Option<&str>> = if wide {
            vec![None]
        } else {
            channels.iter().map(|c| Some(c.as_str())).collect()
        };
        for channel in asked {
            for f in store.finished(channel, since, MINUTE)? {
                rows.extend([
                    (f.bucket, Status::Done, f.done),
                    (f.bucket, Status::Failed, f.failed),
                ]);
            }
        }
        for f in Finished::tally(rows, MINUTE) {
            self.minutes.insert(f.bucket, f);
        }
        Ok(self.hour(first))
    }

    /// The hour's minutes from `first`, none left out.
    fn hour(&self, first: Timestamp) -> Vec<Finished> {
        (0..MINUTES)
            .map(|i| {
                let bucket = Timestamp::from_millis(first.as_millis() + i * 60_000);
                self.minutes
                    .get(&bucket)
                    .copied()
                    .unwrap_or_else(|| Finished::none(bucket))
            })
            .collect()
    }

    /// Counts the whole hour again on the next request.
    fn forget(&mut self) {
        self.counted_at = None;
    }
}

impl App {
    /// After an action: the next overview counts again.
    fn forget_chart(&self) {
        self.chart
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget();
        self.overviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Serves `store` until SIGINT or SIGTERM; calls `ready` with the address it listens on.
pub(crate) fn run(
    store: Box<dyn Store>,
    options: Options,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let app = Arc::new(App {
        store: Arc::from(store),
        token: options.token,
        csrf: random_token()?,
        read_only: options.read_only,
        chart: Mutex::default(),
        overviews: Mutex::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr).await?;
        ready(listener.local_addr()?);
        axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown())
            .await
    })
}

fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/", get(page))
        .route("/tasks/{id}", get(page))
        .route("/assets/app.js", get(script))
        .route("/assets/style.css", get(style))
        .route("/api/overview", get(overview))
        .route("/api/tasks/{id}", get(task))
        .route("/metrics", get(metrics));
    if !app.read_only {
        router = router
            .route("/api/requeue-failed", post(requeue_failed))
            .route("/api/clear-failed", post(clear_failed))
            .route("/api/cancel", post(cancel))
            .route("/api/pause", post(pause))
            .route("/api/resume", post(resume));
    }
    router
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = term.recv() => {}
    }
}

/// 32 random bytes, in hex.
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares secrets in a time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Lets a request through if it may be served, and adds the security headers to its
/// response.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let mut response = match admit(&app, request.method(), request.uri(), request.headers()) {
        Admission::Serve => next.run(request).await,
        Admission::Refuse(status, why) => (status, why).into_response(),
        Admission::Remember(token, to) => Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, to)
            .header(
                header::SET_COOKIE,
                format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"),
            )
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

enum Admission {
    Serve,
    Refuse(StatusCode, &'static str),
    /// The right token came in the address: keep it in a cookie, and go to `to`.
    Remember(String, String),
}

fn admit(app: &App, method: &Method, uri: &Uri, headers: &HeaderMap) -> Admission {
    let Some(token) = &app.token else {
        return if headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(is_loopback_host)
        {
            Admission::Serve
        } else {
            Admission::Refuse(
                StatusCode::FORBIDDEN,
                "without --token, the dashboard answers only requests to a loopback host \
                 (localhost, 127.0.0.1, [::1])\n",
            )
        };
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find(|c| same_secret(c, token));
    if cookie.is_some() || bearer.is_some_and(|b| same_secret(b, token)) {
        return Admission::Serve;
    }
    let in_query = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("token="))
        .any(|t| same_secret(t, token));
    if in_query && method == Method::GET {
        return Admission::Remember(token.clone(), uri.path().to_owned());
    }
    Admission::Refuse(
        StatusCode::UNAUTHORIZED,
        "this dashboard needs its token: open it once as /?token=TOKEN, or send \
         `Authorization: Bearer TOKEN`\n",
    )
}

/// `localhost`, an address in 127.0.0.0/8 or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error as the API answers it: a status and `{"error": message}`.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        let status = match e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidTransition { .. } => StatusCode::CONFLICT,
            Error::InvalidChannel { .. } => StatusCode::BAD_REQUEST,
            Error::UnknownChannel(_) => StatusCode::NOT_FOUND,
            Error::ReadOnly { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(status, e.to_string())
    }
}

/// Runs `f` on the store off the async threads (stores block).
async fn on_store<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&dyn Store, Timestamp) -> Result<T, Error> + Send + 'static,
) -> Result<T, Refusal> {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || f(&*store, now(&*store)))
        .await
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Refusal::from)
}

async fn page(State(app): State<Arc<App>>) -> Response {
    let html = PAGE.replace("{{csrf}}", &app.csrf).replace(
        "{{read_only}}",
        if app.read_only { "true" } else { "false" },
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// Which page of channels the overview shows: those named after `after`.
#[derive(Debug, Default, Deserialize)]
struct Page {
    #[serde(default)]
    after: String,
}

/// A page of channels (at most [`CHANNELS_SHOWN`], from the one after `page.after`) with
/// their counts and oldest pending task, the counts of every channel, done and failed per
/// minute over the last hour, and the first failed tasks of the page's channels (by
/// channel, then id), their arguments cut to a preview. The same page is answered from
/// memory for a second, to every tab.
async fn overview(
    State(app): State<Arc<App>>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, Refusal> {
    if let Some((at, value)) = app
        .overviews
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&page.after)
        && at.elapsed() < OVERVIEW_FRESH
    {
        return Ok(Json(value.clone()));
    }
    let read_only = app.read_only;
    let shared = app.clone();
    let after = page.after.clone();
    let value = on_store(&app, move |store, now| {
        let names = store.channels()?;
        // In name order (the store's): the page starts past `after`.
        let rest = &names[names.partition_point(|n| *n <= after)..];
        let shown = rest[..rest.len().min(CHANNELS_SHOWN)].to_vec();
        let next = (rest.len() > shown.len())
            .then(|| shown.last().cloned())
            .flatten();
        let flows = store.flows()?;
        let channels = shown
            .into_iter()
            .map(|name| store.summary_with(name, &flows))
            .collect::<Result<Vec<_>, _>>()?;
        let all = store.counts(None)?;
        let minutes = shared
            .chart
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(store, &names, now)?;
        let minutes: Vec<Value> = minutes
            .iter()
            .map(|f| json!({ "bucket_ms": f.bucket.as_millis(), "done": f.done, "failed": f.failed }))
            .collect();
        // Channel by channel, over each one's index of failed tasks: a query of every
        // channel's would walk the table in id order past every other task.
        let mut failed = Vec::new();
        for c in channels.iter().filter(|c| c.counts.failed > 0) {
            if failed.len() >= FAILED_SHOWN {
                break;
            }
            let page = ListFilter::new(FAILED_SHOWN - failed.len())
                .channel(c.name.as_str())
                .status(Status::Failed);
            failed.extend(store.list(&page)?.iter().map(|t| {
                let mut task = task_json(t);
                task["args"] = json!(preview(&task["args"]));
                task
            }));
        }
        let mut value = summary_json(&channels, now);
        // Thread handlers past their timeout, in whichever process: a count per channel.
        let mut stuck = std::collections::BTreeMap::<String, usize>::new();
        for mark in store.stuck(None)? {
            *stuck.entry(mark.channel).or_default() += 1;
        }
        if let Some(shown) = value["channels"].as_array_mut() {
            for c in shown {
                let n = c["channel"].as_str().and_then(|name| stuck.get(name));
                c["stuck"] = json!(n.copied().unwrap_or(0));
            }
        }
        value["minutes"] = json!(minutes);
        value["failed"] = json!(failed);
        value["failed_total"] = json!(all.failed);
        value["channels_total"] = json!(names.len());
        value["channels_next"] = json!(next);
        value["read_only"] = json!(read_only);
        Ok(value)
    })
    .await?;
    app.overviews
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(page.after, (Instant::now(), value.clone()));
    Ok(Json(value))
}

/// Arguments as JSON text, cut to [`ARGS_PREVIEW`] characters (a task's page shows them
/// whole): failed tasks of a megabyte each made every overview tens of megabytes.
fn preview(args: &Value) -> String {
    let text = args.to_string();
    match text.char_indices().nth(ARGS_PREVIEW) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

async fn task(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Result<Json<Value>, Refusal> {
    let (task, result, parents, stuck, now) = on_store(&app, move |store, now| {
        let id = TaskId::new(id);
        let task = store.get(id)?;
        let stuck = match &task {
            Some(t) if t.state.status == Status::Running => store
                .stuck(Some(&t.channel))?
                .into_iter()
                .find(|mark| mark.id == id),
            _ => None,
        };
        Ok((task, store.result(id)?, store.parents(id)?, stuck, now))
    })
    .await?;
    let task =
        task.ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("no task with id {id}")))?;
    let mut value = task_json(&task);
    value["result"] = result_json(result);
    value["parents"] = json!(parents.iter().map(|p| p.get()).collect::<Vec<i64>>());
    value["stuck_since_ms"] = json!(stuck.map(|mark| mark.since.as_millis()));
    value["now_ms"] = json!(now.as_millis());
    Ok(Json(value))
}

async fn metrics(State(app): State<Arc<App>>) -> Result<Response, Refusal> {
    let text = on_store(&app, prometheus::exposition).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Refuses an action whose request lacks the page's CSRF token.
fn check_csrf(app: &App, headers: &HeaderMap) -> Result<(), Refusal> {
    let sent = headers
        .get("x-csrf-token")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if same_secret(sent, &app.csrf) {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::FORBIDDEN,
            "the request lacks the page's CSRF token: reload the page".into(),
        ))
    }
}

#[derive(Deserialize)]
struct ChannelAction {
    channel: Option<String>,
    retries: Option<u32>,
}

#[derive(Deserialize)]
struct PauseAction {
    channel: String,
}

#[derive(Deserialize)]
struct TaskAction {
    id: i64,
}

async fn requeue_failed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(action): Json<ChannelAction>,
) -> Result<Json<Value>, Refusal> {
    check_csrf(&app, &headers)?;
    let n = on_store(&app, move |store, now| {
        store.requeue_failed(action.channel.as_deref(), action.retries, now)
    })
    .await?;
    app.forget_chart();
    Ok(Json(json!({ "requeued": n })))
}

async fn clear_failed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(action): Json<ChannelAction>,
) -> Result<Json<Value>, Refusal> {
    check_csrf(&app, &headers)?;
    let n = on_store(&app, move |store, _| {
        store.clear_failed(action.channel.as_deref())
    })
    .await?;
    app.forget_chart();
    Ok(Json(json!({ "cleared": n })))
}

async fn pause(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(action): Json<PauseAction>,
) -> Result<Json<Value>, Refusal> {
    set_paused(app, headers, action.channel, true).await
}

async fn resume(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(action): Json<PauseAction>,
) -> Result<Json<Value>, Refusal> {
    set_paused(app, headers, action.channel, false).await
}

/// Pauses or resumes `channel` for every process on the queue.
async fn set_paused(
    app: Arc<App>,
    headers: HeaderMap,
    channel: String,
    paused: bool,
) -> Result<Json<Value>, Refusal> {
    check_csrf(&app, &headers)?;
    let name = channel.clone();
    let changed = on_store(&app, move |store, _| {
        store.pause_known(&name, paused, false)
    })
    .await?;
    app.forget_chart();
    Ok(Json(
        json!({ "channel": channel, "paused": paused, "changed": changed }),
    ))
}

async fn cancel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(action): Json<TaskAction>,
) -> Result<Json<Value>, Refusal> {
    check_csrf(&app, &headers)?;
    on_store(&app, move |store, now| {
        store.cancel(TaskId::new(action.id), now)
    })
    .await?;
    Ok(Json(json!({ "cancelled": action.id })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_apart() {
        for host in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:9",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "evil.localhost.com:80",
            "10.0.0.1:8080",
            "[::2]:1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
