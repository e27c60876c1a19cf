//! `simplepyq serve`, run as its own process: the dashboard in a real headless Chromium
//! (Debian's `chromium` and `chromium-driver`, driven through WebDriver), its access rules
//! over plain HTTP, and `/metrics` read by a Prometheus text parser.
//!
//! A missing browser fails these tests with the command that installs it: they never skip.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use simplepyq::{Finished, Outcome, SqliteStore, Status, Store, Timestamp, Totals};
use simplepyq_core::prelude::*;
use simplepyq_core::{Clock, NewTask, StoreExt, SystemClock};
use simplepyq_tests::lifecycle::wait_until;

const TOKEN: &str = "a-token-of-at-least-16-characters";
const HOW_TO_GET_CHROMIUM: &str = "the dashboard's tests need Chromium and its driver \
    (Debian: `apt-get install chromium chromium-driver`; the suite installs them as root)";
const XSS: &str = "<script>window.pwned = true</script><img src=x onerror=\"window.pwned = true\">";

/// Waits, if need be, until the clock is at least 4 s past a minute and 4 s before the next.
async fn settle_minute() {
    let into = now().as_millis().rem_euclid(60_000);
    let wait = if into < 4_000 {
        4_000 - into
    } else if into > 56_000 {
        64_000 - into
    } else {
        0
    };
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
}

/// A `simplepyq serve` process, stopped when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Served {
    fn start(target: &str, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_simplepyq"))
            .args(["serve", target, "--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start simplepyq serve");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("its stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read its first line");
        let addr = line
            .trim()
            .rsplit_once("http://")
            .and_then(|(_, a)| a.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Served { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 request over a plain socket: the status and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("receive");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// The page's CSRF token.
fn csrf(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    let (status, page) = http(addr, "GET", "/", headers, "");
    assert_eq!(status, 200, "{page}");
    let at = page
        .find("name=\"csrf-token\" content=\"")
        .expect("the token's meta tag")
        + 27;
    page[at..at + 64].to_owned()
}

fn now() -> Timestamp {
    SystemClock.now()
}

/// Runs one attempt of `channel`'s next task to `outcome`.
fn run_one(store: &dyn Store, channel: &str, outcome: Outcome) {
    let t = now();
    let claimed = store
        .claim(channel, 1, t, t.after(Duration::from_secs(30)))
        .expect("claim");
    let task = claimed.first().expect("a due task");
    store.finish(task.claim(), &outcome, t).expect("finish");
}

fn failure(error: &str) -> Outcome {
    Outcome::Failed {
        error: error.into(),
        retry_at: now(),
        permanent: false,
    }
}

fn args(value: Value) -> Vec<u8> {
    rmp_serde::to_vec(&value).expect("encode")
}

/// A SQLite queue: `emails` with 3 done, 2 failed (one with markup in its arguments and
/// error) and 1 pending task; `reports` with 2 pending and 1 delayed; and a channel whose
/// name is markup, with one pending task.
fn filled(dir: &Path) -> (PathBuf, SqliteStore) {
    let path = dir.join("tasks.db");
    let store = SqliteStore::open(&path).expect("open");
    let t = now();
    let enqueue = |channel: &str, value: Value| {
        store
            .enqueue_one(NewTask::new(channel, args(value)), t)
            .expect("enqueue");
    };
    for i in 0..3 {
        enqueue("emails", json!([i]));
        run_one(&store, "emails", Outcome::Succeeded);
    }
    enqueue("emails", json!([3]));
    run_one(&store, "emails", failure("smtp: connection refused"));
    enqueue("emails", json!({ "body": XSS }));
    run_one(&store, "emails", failure(XSS));
    enqueue("emails", json!([5]));
    // An hour of history, for the chart.
    for minutes_ago in 1..60u64 {
        let at = Timestamp::from_millis(t.as_millis() - (minutes_ago * 60_000) as i64);
        let n = (minutes_ago * 7 % 11 + 2) as usize;
        let batch: Vec<_> = (0..n)
            .map(|i| NewTask::new("thumbnails", args(json!([minutes_ago, i]))))
            .collect();
        store.enqueue(&batch, at).expect("enqueue");
        let claimed = store
            .claim("thumbnails", n, at, at.after(Duration::from_secs(30)))
            .expect("claim");
        let results: Vec<_> = claimed
            .iter()
            .enumerate()
            .map(|(i, task)| {
                let outcome = if i == 0 && minutes_ago % 9 == 0 {
                    Outcome::Failed {
                        error: "image too large".into(),
                        retry_at: at,
                        permanent: false,
                    }
                } else {
                    Outcome::Succeeded
                };
                (task.claim(), outcome)
            })
            .collect();
        store.finish_many(&results, at).expect("finish");
    }
    for i in 0..2 {
        store
            .enqueue_one(
                NewTask::new("reports", args(json!(["daily", i])))
                    .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                t,
            )
            .expect("enqueue");
    }
    let later = NewTask::new("reports", args(json!(["weekly"])))
        .run_at(t.after(Duration::from_secs(3_600)));
    store.enqueue_one(later, t).expect("enqueue");
    store
        .enqueue_one(NewTask::new(XSS, args(json!([]))), t)
        .expect("enqueue");
    let per_minute = simplepyq_core::Rate::new(100, Duration::from_secs(60));
    store
        .set_rate("thumbnails", Some(per_minute))
        .expect("rate");
    let per_second = simplepyq_core::Rate::new(5, Duration::from_secs(1));
    store
        .set_rate_per_key("thumbnails", Some(per_second))
        .expect("rate per key");
    (path, store)
}

/// A chromedriver process and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let find = || {
            let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file());
            let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .into_iter()
                .find(|p| Path::new(p).is_file());
            driver.zip(browser)
        };
        // On a fresh machine the suite installs them (Debian's packages).
        let found = find().or_else(|| {
            if let Err(e) = simplepyq_tests::system::install(&["chromium", "chromium-driver"]) {
                panic!("no Chromium and chromedriver found, and {e}: {HOW_TO_GET_CHROMIUM}");
            }
            find()
        });
        let (chromedriver, chromium) =
            found.unwrap_or_else(|| panic!("no Chromium and chromedriver: {HOW_TO_GET_CHROMIUM}"));
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Its own process group, so that dropping it ends the browser it started too,
        // also when a test fails before closing the session.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a profile folder");
        let options = json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("no browser session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Browser {
            driver,
            client: Some(client),
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// The rendered text of the first element `css` selects, once there is one. Read in
    /// one script: the page redraws when the store changes, so a WebDriver element
    /// reference can go stale between finding and reading it.
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self
                .client()
                .execute(
                    "const e = document.querySelector(arguments[0]); \
                     return e === null ? null : e.innerText;",
                    vec![json!(css)],
                )
                .await
                .expect("run a script");
            match text {
                Value::String(text) => return text,
                _ if Instant::now() > deadline => panic!("nothing matches {css}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Clicks the first element `css` selects, finding it again if the page redrew it
    /// in between.
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let clicked = match self.client().find(Locator::Css(css)).await {
                Ok(element) => element.click().await,
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("cannot click {css}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits (up to 10 s) until the element's text passes `check`; returns the text.
    async fn wait_for(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text(css).await;
            if check(&text) || Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_store_and_acts_on_it_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, store) = filled(dir.path());
    let served = Served::start(path.to_str().expect("utf-8"), &[]);
    let browser = Browser::start().await;
    let b = &browser;
    b.client()
        .goto(&served.url("/"))
        .await
        .expect("open the dashboard");

    // The counts shown are the store's.
    for channel in ["emails", "reports", "thumbnails"] {
        let counts = store.counts(Some(channel)).expect("counts");
        for status in Status::ALL {
            let css = format!("tr[data-channel=\"{channel}\"] td[data-status=\"{status}\"]");
            assert_eq!(
                b.text(&css).await,
                counts.get(status).to_string(),
                "{channel} {status}"
            );
        }
    }
    // The channel's rates.
    let rates = b.text("tr[data-channel=\"thumbnails\"] td").await;
    assert!(
        rates.contains("≤ 100 starts / 1m 0s") && rates.contains("≤ 5 starts / 1s per key"),
        "{rates}"
    );
    // The last hour's chart counts what the store finished: in the dashboard's window, the
    // current minute and the 59 before it, read well inside a minute (the page is at most
    // a second or two old; the history reaches back 59 minutes, so that a minute turning
    // between the page and this count moved a minute of tasks out of one of them).
    settle_minute().await;
    let minute = Duration::from_secs(60);
    let first = Finished::bucket_of(now(), minute).as_millis() - 59 * 60_000;
    let hour = store
        .finished(None, Timestamp::from_millis(first), minute)
        .expect("finished");
    let (done, failed) = hour
        .iter()
        .fold((0, 0), |(d, f), b| (d + b.done, f + b.failed));
    assert!(
        done > 3 && failed > 2,
        "the history and the emails: {done} {failed}"
    );
    assert_eq!(
        b.text("#hour").await,
        format!("{done} done {failed} failed")
    );

    // Markup from tasks (arguments, an error, a channel name) shows as text, and no script
    // of it is in the page or ran.
    let page_text = b.text("main").await;
    assert!(
        page_text.contains(XSS),
        "the channel named with markup, as text: {page_text}"
    );
    let shown = b
        .client()
        .execute(
            "return [...document.querySelectorAll('#failed code.args')].map(e => e.innerText)",
            vec![],
        )
        .await
        .expect("run a script");
    let shown: Vec<String> = serde_json::from_value(shown).expect("strings");
    let escaped_args = serde_json::to_string(&json!({ "body": XSS })).expect("json");
    assert!(shown.contains(&escaped_args), "{shown:?}");
    let scripts = b
        .client()
        .execute(
            "return [document.querySelectorAll('script').length, \
             document.querySelectorAll('main img').length, window.pwned === undefined]",
            vec![],
        )
        .await
        .expect("run a script");
    assert_eq!(
        scripts,
        json!([1, 0, true]),
        "only the page's own script, and nothing ran"
    );

    if let Some(to) = std::env::var_os("SIMPLEPYQ_DASHBOARD_SCREENSHOT") {
        let png = b.client().screenshot().await.expect("screenshot");
        std::fs::write(to, png).expect("write the screenshot");
    }

    // Clicking "Requeue failed" makes the failed tasks pending; the page follows.
    let before = store.counts(Some("emails")).expect("counts");
    b.click("tr[data-channel=\"emails\"] button.requeue").await;
    wait_until("the failed tasks are pending", || {
        let c = store.counts(Some("emails")).expect("counts");
        c.failed == 0 && c.pending == before.pending + before.failed
    });
    let failed_cell = "tr[data-channel=\"emails\"] td[data-status=\"failed\"]";
    assert_eq!(b.wait_for(failed_cell, |t| t == "0").await, "0");
    assert!(
        b.wait_for("#notice", |t| t.contains("Requeued 2"))
            .await
            .contains("Requeued 2"),
        "the page says what it did"
    );

    // "Pause" asks first, then pauses the channel for every worker; the row says so, and
    // "Resume" undoes it.
    b.click("tr[data-channel=\"emails\"] button.pause").await;
    b.client().accept_alert().await.expect("confirm");
    wait_until("the channel is paused", || {
        store
            .flows()
            .expect("flows")
            .get("emails")
            .is_some_and(|f| f.paused)
    });
    assert!(
        b.wait_for("tr[data-channel=\"emails\"] td", |t| t.contains("paused"))
            .await
            .contains("paused")
    );
    b.click("tr[data-channel=\"emails\"] button.resume").await;
    wait_until("the channel is resumed", || {
        !store.flows().expect("flows").contains_key("emails")
    });
    assert!(
        b.wait_for("#notice", |t| t.contains("Resumed emails"))
            .await
            .contains("Resumed emails")
    );

    // "Clear failed" asks first, then deletes the channel's failed tasks.
    let thumbnails = store.counts(Some("thumbnails")).expect("counts");
    assert!(thumbnails.failed > 0);
    b.click("tr[data-channel=\"thumbnails\"] button.clear")
        .await;
    b.client().accept_alert().await.expect("confirm");
    wait_until("the failed thumbnails are deleted", || {
        store.counts(Some("thumbnails")).expect("counts").failed == 0
    });
    let after = store.counts(Some("thumbnails")).expect("counts");
    assert_eq!(after.done, thumbnails.done, "only failed tasks are deleted");
    let cell = "tr[data-channel=\"thumbnails\"] td[data-status=\"failed\"]";
    assert_eq!(b.wait_for(cell, |t| t == "0").await, "0");

    // Live: a task enqueued elsewhere shows without a reload.
    let pending_cell = "tr[data-channel=\"reports\"] td[data-status=\"pending\"]";
    store
        .enqueue_one(NewTask::new("reports", args(json!(["new"]))), now())
        .expect("enqueue");
    assert_eq!(b.wait_for(pending_cell, |t| t == "3").await, "3");

    // Workers of another process (this one) run tasks while the dashboard serves: the
    // page follows them to the end.
    let workers = simplepyq::SimplePyQ::open(&path).expect("open a queue");
    workers
        .add_channel(
            "live",
            |_: u32| {
                std::thread::sleep(Duration::from_millis(2));
                Ok(())
            },
            2,
        )
        .expect("add a channel");
    for n in 0..200u32 {
        workers.enqueue("live", &n).expect("enqueue");
    }
    workers.start().expect("start");
    let live_done = "tr[data-channel=\"live\"] td[data-status=\"done\"]";
    assert_eq!(b.wait_for(live_done, |t| t == "200").await, "200");
    workers.stop();
    assert_eq!(store.counts(Some("live")).expect("counts").done, 200);

    // A task's page: cancel a pending task.
    let id = store
        .list(&simplepyq::ListFilter::new(1).channel("reports"))
        .expect("list")[0]
        .id;
    b.client()
        .goto(&served.url(&format!("/tasks/{id}")))
        .await
        .expect("the task's page");
    assert_eq!(b.text("#task-status").await, "pending");
    // Its trace, by the trace id of the context it was enqueued in.
    assert_eq!(
        b.text("#task-trace").await,
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    b.click("button.cancel").await;
    b.client().accept_alert().await.expect("confirm");
    wait_until("the task is cancelled", || {
        store.get(id).expect("get").is_none()
    });
    assert!(
        b.wait_for("main", |t| t.contains("no task with id"))
            .await
            .contains("no task with id"),
        "the page follows"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_request_needs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, store) = filled(dir.path());
    let served = Served::start(path.to_str().expect("utf-8"), &["--token", TOKEN]);
    let addr = served.addr;
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/", "/api/overview", "/metrics", "/tasks/1", "/api/tasks/1"] {
        assert_eq!(
            http(addr, "GET", path, &[], "").0,
            401,
            "{path} without the token"
        );
        let wrong = [("Authorization", "Bearer a-token-of-at-least-16-characterz")];
        assert_eq!(
            http(addr, "GET", path, &wrong, "").0,
            401,
            "{path} with a wrong token"
        );
        let (status, _) = http(addr, "GET", path, &[("Authorization", &bearer)], "");
        assert_eq!(status, 200, "{path} with the token");
    }
    // An action needs the CSRF token as well as the access token.
    let body = r#"{"channel":"emails"}"#;
    let json_type = ("Content-Type", "application/json");
    let (status, _) = http(addr, "POST", "/api/requeue-failed", &[json_type], body);
    assert_eq!(status, 401);
    let (status, said) = http(
        addr,
        "POST",
        "/api/requeue-failed",
        &[("Authorization", &bearer), json_type],
        body,
    );
    assert_eq!(status, 403, "{said}");
    assert_eq!(
        store.counts(Some("emails")).expect("counts").failed,
        2,
        "nothing requeued"
    );
    let csrf = csrf(addr, &[("Authorization", &bearer)]);
    let with_both = [
        ("Authorization", bearer.as_str()),
        json_type,
        ("X-CSRF-Token", &csrf),
    ];
    let (status, said) = http(addr, "POST", "/api/requeue-failed", &with_both, body);
    assert_eq!((status, said.as_str()), (200, r#"{"requeued":2}"#));

    // In a browser: refused without the token; `?token=` once keeps it in a cookie.
    let browser = Browser::start().await;
    let b = &browser;
    b.client().goto(&served.url("/")).await.expect("open");
    assert!(b.text("body").await.contains("needs its token"));
    b.client()
        .goto(&served.url(&format!("/?token={TOKEN}")))
        .await
        .expect("open");
    let url = b.client().current_url().await.expect("url");
    assert_eq!(url.query(), None, "the token leaves the address bar");
    let pending = store
        .counts(Some("emails"))
        .expect("counts")
        .pending
        .to_string();
    assert_eq!(
        b.text("tr[data-channel=\"emails\"] td[data-status=\"pending\"]")
            .await,
        pending
    );
    b.client()
        .goto(&served.url("/api/overview"))
        .await
        .expect("open");
    assert!(
        b.text("body").await.contains("\"channels\""),
        "the cookie is sent"
    );
    browser.close().await;
}

#[test]
fn without_a_token_only_loopback_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _store) = filled(dir.path());
    let path = path.to_str().expect("utf-8");
    // Binding an address that is not loopback needs a token.
    let out = Command::new(env!("CARGO_BIN_EXE_simplepyq"))
        .args(["serve", path, "--addr", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs --token"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_simplepyq"))
        .args(["serve", path, "--token", "short"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "a short token: {out:?}");
    // A request naming another host (a DNS name pointed at 127.0.0.1) is refused.
    let served = Served::start(path, &[]);
    let (status, _) = http(
        served.addr,
        "GET",
        "/api/overview",
        &[("Host", "evil.example:80")],
        "",
    );
    assert_eq!(status, 403);
    let (status, _) = http(
        served.addr,
        "GET",
        "/api/overview",
        &[("Host", "localhost")],
        "",
    );
    assert_eq!(status, 200);
}

#[test]
fn read_only_serves_no_actions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, store) = filled(dir.path());
    let served = Served::start(path.to_str().expect("utf-8"), &["--read-only"]);
    let csrf = csrf(served.addr, &[]);
    let headers = [
        ("Content-Type", "application/json"),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    for (action, body) in [
        ("/api/requeue-failed", r#"{"channel":"emails"}"#),
        ("/api/clear-failed", r#"{"channel":"emails"}"#),
        ("/api/cancel", r#"{"id":6}"#),
    ] {
        let (status, _) = http(served.addr, "POST", action, &headers, body);
        assert_eq!(status, 404, "{action}");
    }
    assert_eq!(store.counts(Some("emails")).expect("counts").failed, 2);
    let (_, page) = http(served.addr, "GET", "/", &[], "");
    assert!(page.contains(r#"<meta name="read-only" content="true">"#));
}

/// `/metrics` parsed as Prometheus parses it: one sample per channel and status, equal to
/// the store's counts, the oldest pending task's age, and the four counters of each
/// channel's totals, equal to `totals` (what the test did) and to the store's.
fn metrics_match_the_store(target: &str, store: &dyn Store, totals: &[(&str, Totals)]) {
    let served = Served::start(target, &[]);
    let (status, text) = http(served.addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let channels = store.channels().expect("channels");
    assert!(!channels.is_empty());
    let flows = store.flows().expect("flows");
    assert!(!flows.is_empty(), "a paused channel in every test");
    for channel in &channels {
        let paused = scrape.samples.iter().find(|s| {
            s.metric == "simplepyq_channel_paused" && s.labels.get("channel") == Some(channel)
        });
        let expected = f64::from(u8::from(flows.get(channel).is_some_and(|f| f.paused)));
        assert_eq!(
            paused.map(|s| &s.value),
            Some(&prometheus_parse::Value::Gauge(expected)),
            "{channel}"
        );
        let max = scrape.samples.iter().find(|s| {
            s.metric == "simplepyq_channel_max_running" && s.labels.get("channel") == Some(channel)
        });
        let expected = flows.get(channel).and_then(|f| f.max_running);
        assert_eq!(
            max.map(|s| &s.value),
            expected
                .map(|m| prometheus_parse::Value::Gauge(f64::from(m)))
                .as_ref(),
            "{channel}"
        );
        let counts = store.counts(Some(channel)).expect("counts");
        for status in Status::ALL {
            let samples: Vec<_> = scrape
                .samples
                .iter()
                .filter(|s| {
                    s.metric == "simplepyq_store_tasks"
                        && s.labels.get("channel") == Some(channel.as_str())
                        && s.labels.get("status") == Some(status.as_str())
                })
                .collect();
            assert_eq!(samples.len(), 1, "{channel} {status}");
            assert_eq!(
                samples[0].value,
                prometheus_parse::Value::Gauge(counts.get(status) as f64),
                "{channel} {status}"
            );
        }
        let age = scrape.samples.iter().find(|s| {
            s.metric == "simplepyq_store_oldest_pending_age_seconds"
                && s.labels.get("channel") == Some(channel.as_str())
        });
        match (counts.pending, age.map(|s| &s.value)) {
            (0, Some(prometheus_parse::Value::Gauge(secs))) => assert_eq!(*secs, 0.0),
            (_, Some(prometheus_parse::Value::Gauge(secs))) => {
                assert!((0.0..600.0).contains(secs), "{channel}: {secs}")
            }
            other => panic!("{channel}: {other:?}"),
        }
    }
    let counted: usize = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "simplepyq_store_tasks")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v as usize,
            _ => panic!("simplepyq_tasks is a gauge"),
        })
        .sum();
    assert_eq!(counted, store.counts(None).expect("counts").total());
    let expected: BTreeMap<String, Totals> =
        totals.iter().map(|(c, t)| ((*c).to_owned(), *t)).collect();
    assert_eq!(store.totals().expect("totals"), expected);
    let counters = [
        "simplepyq_store_tasks_done_total",
        "simplepyq_store_tasks_failed_total",
        "simplepyq_store_tasks_retried_total",
        "simplepyq_store_lease_lost_total",
    ];
    for (channel, t) in totals {
        let figures = [t.done, t.failed, t.retried, t.lease_lost];
        for (name, figure) in counters.iter().zip(figures) {
            let samples: Vec<_> = scrape
                .samples
                .iter()
                .filter(|s| s.metric == *name && s.labels.get("channel") == Some(channel))
                .map(|s| &s.value)
                .collect();
            let value = prometheus_parse::Value::Counter(figure as f64);
            assert_eq!(samples, vec![&value], "{name} of {channel}");
        }
    }
    let samples = scrape.samples.iter();
    let counter_samples = samples.filter(|s| counters.contains(&s.metric.as_str()));
    assert_eq!(counter_samples.count(), counters.len() * totals.len());
}

#[test]
fn metrics_match_counts_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).expect("open");
    let t = now();
    for (channel, n) in [("emails", 4), ("reports", 2)] {
        for i in 0..n {
            store
                .enqueue_one(NewTask::new(channel, args(json!([i]))), t)
                .expect("enqueue");
        }
    }
    run_one(&store, "emails", Outcome::Succeeded);
    run_one(&store, "emails", failure("no"));
    let claimed = store
        .claim("reports", 1, t, t.after(Duration::from_secs(30)))
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one running");
    // A retried run, and a run whose worker died: its lease expires and it is recovered.
    let retried = NewTask::new("retries", args(json!([0]))).retries(1);
    store.enqueue_one(retried, t).expect("enqueue");
    run_one(&store, "retries", failure("again"));
    let t = now();
    let lost = store
        .claim("retries", 1, t, t.after(Duration::from_millis(1)))
        .expect("claim");
    assert_eq!(lost.len(), 1);
    let recovered = store.recover_expired(t.after(Duration::from_millis(2)), 3);
    assert_eq!(recovered.expect("recover"), 1);
    let t = |done, failed, retried, lease_lost| Totals {
        done,
        failed,
        retried,
        lease_lost,
    };
    let totals = [("emails", t(1, 1, 0, 0)), ("retries", t(0, 0, 1, 1))];
    store.set_paused("reports", true).expect("pause");
    store.set_max_running("emails", Some(4)).expect("limit");
    metrics_match_the_store(path.to_str().expect("utf-8"), &store, &totals);
}

#[test]
fn metrics_match_counts_on_postgres() {
    use simplepyq::PostgresStore;
    use simplepyq_tests::postgres::{DropSchema, fresh_schema, options, server};
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store = PostgresStore::connect_with(server().url(), options(&schema)).expect("connect");
    let t = store.clock().expect("the server's clock").now();
    for (channel, n) in [("emails", 3), ("reports", 1)] {
        for i in 0..n {
            store
                .enqueue_one(NewTask::new(channel, args(json!([i]))), t)
                .expect("enqueue");
        }
    }
    let claimed = store
        .claim("emails", 1, t, t.after(Duration::from_secs(30)))
        .expect("claim");
    store
        .finish(claimed[0].claim(), &Outcome::Succeeded, t)
        .expect("finish");
    let url = format!("{}?schema={schema}", server().url());
    let done = Totals {
        done: 1,
        ..Totals::default()
    };
    store.set_paused("emails", true).expect("pause");
    metrics_match_the_store(&url, &store, &[("emails", done)]);
    // The overview of a PostgreSQL queue, as the page gets it.
    let served = Served::start(&url, &[]);
    let (status, body) = http(served.addr, "GET", "/api/overview", &[], "");
    assert_eq!(status, 200, "{body}");
    let overview: Value = serde_json::from_str(&body).expect("json");
    let emails = &overview["channels"][0];
    assert_eq!(emails["channel"], "emails");
    let counts = store.counts(Some("emails")).expect("counts");
    assert_eq!(
        (emails["pending"].as_u64(), emails["done"].as_u64()),
        (Some(counts.pending as u64), Some(counts.done as u64))
    );
    let hour: u64 = overview["minutes"]
        .as_array()
        .expect("minutes")
        .iter()
        .filter_map(|m| m["done"].as_u64())
        .sum();
    assert_eq!(
        hour, 1,
        "the chart counts the task done on the server's clock"
    );
}

/// With more channels than a page shows (100 here of 250), the overview counts only the
/// page's channels one by one (the next page through `?after=`), the chart and the totals
/// still cover every channel, a failed task's arguments come as a short preview (its page
/// has them whole), and an overview is answered from memory to every request within a
/// second: one open dashboard costs the store one overview a second, whatever the number
/// of channels or tabs.
#[test]
fn the_overview_pages_channels_and_cuts_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).expect("open");
    let t = now();
    let tasks: Vec<NewTask> = (0..250)
        .map(|i| NewTask::new(format!("tenant-{i:03}"), args(json!([i]))))
        .collect();
    store.enqueue(&tasks, t).expect("enqueue");
    for i in 0..250 {
        run_one(&store, &format!("tenant-{i:03}"), Outcome::Succeeded);
    }
    let big = json!({ "blob": "x".repeat(100_000) });
    store
        .enqueue_one(NewTask::new("tenant-000", args(big.clone())), t)
        .expect("enqueue");
    run_one(&store, "tenant-000", failure("too big"));
    let served = Served::start(path.to_str().expect("utf-8"), &[]);
    let overview = |path: &str| -> Value {
        let (status, body) = http(served.addr, "GET", path, &[], "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    };
    let first = overview("/api/overview");
    let names = |o: &Value| -> Vec<String> {
        o["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .map(|c| c["channel"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(names(&first).len(), 100);
    assert_eq!(first["channels_total"], 250);
    assert_eq!(first["channels_next"], "tenant-099");
    let asked = std::time::Instant::now();
    let third = overview("/api/overview?after=tenant-199");
    assert_eq!(
        names(&third).first().map(String::as_str),
        Some("tenant-200")
    );
    assert_eq!(
        (names(&third).len(), &third["channels_next"]),
        (50, &Value::Null)
    );
    let hour: u64 = first["minutes"]
        .as_array()
        .expect("minutes")
        .iter()
        .filter_map(|m| m["done"].as_u64())
        .sum();
    assert_eq!(hour, 250, "the chart counts every channel");
    assert_eq!(first["failed_total"], 1);
    let shown = first["failed"][0]["args"].as_str().expect("a preview");
    assert!(shown.chars().count() <= 301, "{} characters", shown.len());
    let id = first["failed"][0]["id"].as_i64().expect("id");
    let whole = overview(&format!("/api/tasks/{id}"));
    assert_eq!(whole["args"], big);
    // A change the dashboard did not make shows within a second, not at once.
    store
        .enqueue_one(NewTask::new("tenant-249", args(json!([0]))), now())
        .expect("enqueue");
    let again = overview("/api/overview?after=tenant-199");
    // (Unless this machine took a second for the requests between.)
    if asked.elapsed() < Duration::from_millis(900) {
        assert_eq!(again["channels"], third["channels"], "answered from memory");
    }
    std::thread::sleep(Duration::from_millis(1_100));
    let later = overview("/api/overview?after=tenant-199");
    assert_eq!(later["channels"][49]["pending"], 1);
}

/// A waiting task's page names the tasks it waits for; the overview counts it as waiting.
#[test]
fn a_waiting_task_names_its_parents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, store) = filled(dir.path());
    let parent = store
        .enqueue_one(NewTask::new("fetch", args(json!([1]))), now())
        .expect("enqueue");
    let child = store
        .enqueue_one(
            NewTask::new("merge", args(json!([2]))).after([parent]),
            now(),
        )
        .expect("enqueue");
    let served = Served::start(path.to_str().expect("utf-8"), &["--read-only"]);
    let (status, body) = http(served.addr, "GET", &format!("/api/tasks/{child}"), &[], "");
    assert_eq!(status, 200, "{body}");
    let task: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (&task["status"], &task["parents"]),
        (&json!("waiting"), &json!([parent.get()]))
    );
    let (_, body) = http(served.addr, "GET", "/api/overview", &[], "");
    let overview: Value = serde_json::from_str(&body).expect("json");
    let merge = overview["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["channel"] == "merge")
        .cloned()
        .expect("the merge channel");
    assert_eq!(merge["waiting"], 1);
}

/// A handler past its timeout that still runs, in any process (marked in the store):
/// counted on its channel's row of the overview, dated on its task's page, and given by
/// `/metrics`; a channel without one counts 0.
#[test]
fn a_stuck_handler_is_shown_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, store) = filled(dir.path());
    let t = now();
    let running = store
        .claim("reports", 1, t, t.after(Duration::from_secs(60)))
        .expect("claim")
        .remove(0);
    let since = Timestamp::from_millis(t.as_millis() - 5_000);
    assert!(store.mark_stuck(running.claim(), since).expect("mark"));
    let served = Served::start(path.to_str().expect("utf-8"), &["--read-only"]);
    let (status, body) = http(served.addr, "GET", "/api/overview", &[], "");
    assert_eq!(status, 200, "{body}");
    let overview: Value = serde_json::from_str(&body).expect("json");
    let stuck_of = |name: &str| {
        overview["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .find(|c| c["channel"] == name)
            .map(|c| c["stuck"].clone())
    };
    assert_eq!(stuck_of("reports"), Some(json!(1)));
    assert_eq!(stuck_of("emails"), Some(json!(0)));
    let (_, body) = http(
        served.addr,
        "GET",
        &format!("/api/tasks/{}", running.id),
        &[],
        "",
    );
    let task: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(task["stuck_since_ms"], json!(since.as_millis()));
    let (_, body) = http(served.addr, "GET", "/metrics", &[], "");
    assert!(
        body.contains("simplepyq_store_tasks_stuck{channel=\"reports\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("simplepyq_store_tasks_stuck{channel=\"emails\"} 0\n"),
        "{body}"
    );
}
