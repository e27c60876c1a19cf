//! The `simplepyq` binary run for real on real queue files.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use simplepyq::{EnqueueOptions, RedbStore, SimplePyQ, SqliteStore, Store, TaskContext, TaskError};
use simplepyq::{FlowStore, InspectStore};

const BIN: &str = env!("CARGO_BIN_EXE_simplepyq");

fn cli(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run simplepyq");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn ok(args: &[&str]) -> String {
    let out = cli(args, "");
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A queue with 3 done, 2 failed and 1 pending task of "mail", and 1 pending of "sms";
/// the first (a@x) done with the result `["sent", 1]`.
fn fill<S: Store>(q: &SimplePyQ<S>) {
    q.add_channel(
        "mail",
        |to: String, ctx: &TaskContext| {
            if to.starts_with("bad") {
                Err(TaskError::msg(format!("{to}: mailbox full")))
            } else {
                if to == "a@x" {
                    ctx.set_result(&("sent", 1))?;
                }
                Ok(())
            }
        },
        1,
    )
    .expect("add");
    for to in ["a@x", "b@x", "c@x", "bad1@x", "bad2@x"] {
        q.enqueue("mail", to).expect("enqueue");
    }
    q.run_until_complete().expect("run");
    q.enqueue_with(
        "mail",
        "later@x",
        EnqueueOptions::new().delay(Duration::from_secs(3_600)),
    )
    .expect("enqueue");
    q.enqueue_with(
        "sms",
        &("+1555", 3u8),
        EnqueueOptions::new().traceparent(TRACEPARENT),
    )
    .expect("enqueue");
}

/// The trace context the task of "sms" was enqueued with.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn sqlite_queue(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tasks.db");
    fill(&SimplePyQ::open(&path).expect("open"));
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn summary_counts_every_channel_and_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    let text = ok(&["summary", s(&db)]);
    assert!(text.contains("mail"), "{text}");
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    let channels = json["channels"].as_array().expect("channels");
    assert_eq!(channels.len(), 2);
    let mail = &channels[0];
    assert_eq!(mail["channel"], "mail");
    assert_eq!(
        (mail["done"].as_u64(), mail["failed"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(mail["delayed"].as_u64(), Some(1));
    assert!(mail["next_wakeup_ms"].as_i64().is_some());
    assert_eq!(channels[1]["pending"].as_u64(), Some(1));
    assert!(channels[1]["oldest_pending_age_ms"].as_i64().is_some());
}

/// The commands' old names (`stats` for `summary`, `list` for `tasks`) still work.
#[test]
fn old_command_names_still_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    let channels = |command: &str| -> Value {
        let mut json: Value =
            serde_json::from_str(&ok(&[command, s(&db), "--json"])).expect("json");
        // Without the ages, which grow between the two calls.
        for c in json["channels"].as_array_mut().expect("channels") {
            c.as_object_mut()
                .expect("a channel")
                .remove("oldest_pending_age_ms");
        }
        json["channels"].take()
    };
    assert_eq!(channels("stats"), channels("summary"));
    assert_eq!(
        ok(&["list", s(&db), "--json"]),
        ok(&["tasks", s(&db), "--json"])
    );
}

#[test]
fn tasks_and_show_decode_arguments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    let failed: Value = serde_json::from_str(&ok(&[
        "tasks",
        s(&db),
        "--channel",
        "mail",
        "--status",
        "failed",
        "--json",
    ]))
    .expect("json");
    let failed = failed.as_array().expect("array");
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["args"], "bad1@x");
    assert_eq!(failed[0]["last_error"], "bad1@x: mailbox full");
    let page: Value =
        serde_json::from_str(&ok(&["tasks", s(&db), "--limit", "2", "--json"])).expect("json");
    assert_eq!(page.as_array().map(Vec::len), Some(2));
    let id = failed[1]["id"].as_i64().expect("id").to_string();
    let shown: Value = serde_json::from_str(&ok(&["show", s(&db), &id])).expect("json");
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["result"], Value::Null);
    let first: Value = serde_json::from_str(&ok(&["show", s(&db), "1"])).expect("json");
    assert_eq!(first["result"], serde_json::json!(["sent", 1]));
    let sms = ok(&["tasks", s(&db), "--channel", "sms", "--json"]);
    let sms: Value = serde_json::from_str(&sms).expect("json");
    assert_eq!(sms[0]["args"], serde_json::json!(["+1555", 3]));
    assert_eq!(sms[0]["traceparent"], TRACEPARENT);
    assert_eq!(first["traceparent"], Value::Null);
    let missing = cli(&["show", s(&db), "999"], "");
    assert_eq!(missing.status.code(), Some(4));
}

/// A task waiting for others is counted as waiting in the summary, and `show` names the
/// tasks it waits for.
#[test]
fn waiting_tasks_are_counted_and_show_their_parents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("tasks.db");
    let q = SimplePyQ::open(&db).expect("open");
    let parent = q.enqueue("fetch", &1).expect("enqueue");
    let child = q
        .enqueue_with(
            "merge",
            &2,
            simplepyq::EnqueueOptions::new().after([parent]),
        )
        .expect("enqueue");
    drop(q);
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    let merge = &json["channels"][1];
    assert_eq!(
        (&merge["channel"], merge["waiting"].as_u64()),
        (&Value::from("merge"), Some(1))
    );
    let text = ok(&["summary", s(&db)]);
    assert!(
        text.lines().next().is_some_and(|l| l.contains("waiting")),
        "{text}"
    );
    let shown: Value =
        serde_json::from_str(&ok(&["show", s(&db), &child.to_string()])).expect("json");
    assert_eq!(shown["status"], "waiting");
    assert_eq!(shown["parents"], serde_json::json!([parent.get()]));
}

#[test]
fn management_commands_change_the_queue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    assert!(ok(&["requeue-failed", s(&db), "mail", "--retries", "2"]).contains("requeued 2"));
    {
        let store = SqliteStore::open(&db).expect("open");
        let c = store.counts(Some("mail")).expect("counts");
        assert_eq!((c.pending, c.failed), (2, 0));
    }
    assert!(ok(&["clear-failed", s(&db), "mail"]).contains("deleted 0"));
    assert!(ok(&["purge-done", s(&db), "--older-than", "1d"]).contains("deleted 0"));
    assert!(ok(&["purge-done", s(&db)]).contains("deleted 3"));
    // Failed tasks of a fresh queue (two, of mail).
    let other = tempfile::tempdir().expect("temp dir");
    let fresh = sqlite_queue(other.path());
    assert!(ok(&["purge-failed", s(&fresh), "--older-than", "1d"]).contains("deleted 0"));
    assert!(ok(&["purge-failed", s(&fresh), "--channel", "sms"]).contains("deleted 0"));
    assert!(ok(&["purge-failed", s(&fresh)]).contains("deleted 2 failed"));
    // Declined confirmation: nothing removed, exit 1.
    let declined = cli(&["remove-channel", s(&db), "sms"], "n\n");
    assert_eq!(declined.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&declined.stdout).contains("1 task(s)?"));
    let confirmed = cli(&["remove-channel", s(&db), "sms"], "y\n");
    assert!(confirmed.status.success());
    assert!(ok(&["remove-channel", s(&db), "mail", "--yes"]).contains("3 task(s)"));
    let store = SqliteStore::open(&db).expect("open");
    assert_eq!(store.counts(None).expect("counts").total(), 0);
}

/// `pause` and `resume` change the channel's setting for every process; `summary` says it
/// is paused; a misspelt channel is refused (exit 4), changing nothing.
#[test]
fn pause_and_resume_a_channel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    assert!(ok(&["pause", s(&db), "mail"]).contains("paused channel mail"));
    assert!(ok(&["pause", s(&db), "mail"]).contains("paused already"));
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    let paused: Vec<(&str, bool)> = json["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| (c["channel"].as_str().unwrap_or(""), c["paused"] == true))
        .collect();
    assert_eq!(paused, vec![("mail", true), ("sms", false)]);
    assert!(ok(&["summary", s(&db)]).contains("paused"));
    let store = SqliteStore::open(&db).expect("open");
    assert!(store.flows().expect("flows")["mail"].paused);
    let typo = cli(&["pause", s(&db), "mial"], "");
    assert_eq!(typo.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("no channel \"mial\""));
    assert!(ok(&["resume", s(&db), "mail"]).contains("resumed channel mail"));
    assert!(ok(&["resume", s(&db), "mail"]).contains("was not paused"));
    assert!(store.flows().expect("flows").is_empty());
    assert!(!ok(&["summary", s(&db)]).contains("paused"));
}

/// `limit` sets and removes a channel's limit of running tasks; `summary` shows it; 0 and
/// words are usage errors, changing nothing.
#[test]
fn limit_a_channel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    assert!(ok(&["limit", s(&db), "mail", "2"]).contains("at most 2 task(s) of mail"));
    assert!(ok(&["limit", s(&db), "mail", "2"]).contains("so already"));
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    assert_eq!(json["channels"][0]["max_running"].as_u64(), Some(2));
    assert_eq!(json["channels"][1]["max_running"], Value::Null);
    for bad in ["0", "many", "-1"] {
        let out = cli(&["limit", s(&db), "mail", bad], "");
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    let store = SqliteStore::open(&db).expect("open");
    assert_eq!(store.flows().expect("flows")["mail"].max_running, Some(2));
    assert!(ok(&["limit", s(&db), "mail", "none"]).contains("no limit on mail"));
    assert!(store.flows().expect("flows").is_empty());
    let typo = cli(&["limit", s(&db), "mial", "3"], "");
    assert_eq!(typo.status.code(), Some(4));
    // Per concurrency key: N, and `none` back to the default of 1.
    let out = ok(&["limit", s(&db), "mail", "3", "--per-key"]);
    assert!(
        out.contains("at most 3 task(s) of mail with the same concurrency key"),
        "{out}"
    );
    assert_eq!(store.flows().expect("flows")["mail"].max_running_per_key, 3);
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    assert_eq!(json["channels"][0]["max_running_per_key"].as_u64(), Some(3));
    assert!(ok(&["limit", s(&db), "mail", "none", "--per-key"]).contains("at most 1 task(s)"));
    assert!(store.flows().expect("flows").is_empty());
    let out = cli(&["limit", s(&db), "mail", "0", "--per-key"], "");
    assert_eq!(out.status.code(), Some(2));
    // A rate of starts: N per window, and `none`.
    let out = ok(&["rate", s(&db), "mail", "100", "--per", "1m"]);
    assert!(
        out.contains("at most 100 task(s) of mail start per 60s"),
        "{out}"
    );
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    assert_eq!(json["channels"][0]["rate"]["starts"].as_u64(), Some(100));
    assert_eq!(json["channels"][0]["rate"]["per_ms"].as_u64(), Some(60_000));
    assert!(ok(&["rate", s(&db), "mail", "none"]).contains("no rate on mail"));
    assert!(store.flows().expect("flows").is_empty());
    // A rate per concurrency key.
    let out = ok(&["rate", s(&db), "mail", "10", "--per", "1m", "--per-key"]);
    assert!(
        out.contains("at most 10 task(s) of mail with the same concurrency key start per 60s"),
        "{out}"
    );
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    assert_eq!(json["channels"][0]["rate"], Value::Null);
    assert_eq!(
        json["channels"][0]["rate_per_key"]["starts"].as_u64(),
        Some(10)
    );
    assert_eq!(
        json["channels"][0]["rate_per_key"]["per_ms"].as_u64(),
        Some(60_000)
    );
    let out = ok(&["rate", s(&db), "mail", "none", "--per-key"]);
    assert!(out.contains("no rate per key on mail"), "{out}");
    assert!(store.flows().expect("flows").is_empty());
    assert_eq!(
        cli(&["rate", s(&db), "mail", "0"], "").status.code(),
        Some(2)
    );
}

#[test]
fn missing_and_foreign_files_are_clear_errors_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.db");
    let out = cli(&["summary", s(&missing)], "");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    assert!(!missing.exists(), "the command created the file");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").expect("write");
    let out = cli(&["tasks", s(&text)], "");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a simplepyq queue"));
    assert_eq!(std::fs::read_to_string(&text).expect("read"), "hello");
    let usage = cli(&["summary"], "");
    assert_eq!(usage.status.code(), Some(2));
}

/// The read-only commands never write the file: a file of an older schema, as older
/// workers use it, is read as it is, not migrated under them.
#[test]
fn reading_commands_leave_an_older_file_as_it_is() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    {
        // Take the file back to schema 2, which had no lost-run count, kept its version in
        // the header and named its table `tasks`.
        let conn = rusqlite::Connection::open(&db).expect("open raw");
        conn.execute_batch(
            "ALTER TABLE simplepyq_tasks DROP COLUMN lost_runs; \
             ALTER TABLE simplepyq_tasks RENAME TO tasks; \
             DROP TABLE simplepyq_schedules; DROP TABLE simplepyq_totals; \
             DROP TABLE simplepyq_schema; \
             PRAGMA application_id = 1397774673; PRAGMA user_version = 2;",
        )
        .expect("downgrade");
    }
    let before = std::fs::read(&db).expect("read");
    let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
    assert_eq!(json["channels"][0]["failed"].as_u64(), Some(2));
    assert!(ok(&["tasks", s(&db), "--status", "failed"]).contains("mailbox full"));
    assert!(ok(&["show", s(&db), "1"]).contains("a@x"));
    ok(&["watch", s(&db), "--count", "1"]);
    assert!(
        std::fs::read(&db).expect("read") == before,
        "a reading command wrote the file"
    );
    let version: i64 = rusqlite::Connection::open(&db)
        .expect("open raw")
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 2);
}

#[test]
fn redb_files_are_recognized() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tasks.redb");
    fill(&SimplePyQ::new(RedbStore::open(&path).expect("open")));
    let json: Value = serde_json::from_str(&ok(&["summary", s(&path), "--json"])).expect("json");
    assert_eq!(json["channels"][0]["failed"].as_u64(), Some(2));
    assert!(ok(&["clear-failed", s(&path), "mail"]).contains("deleted 2"));
}

#[test]
fn works_beside_running_workers_and_watch_refreshes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("tasks.db");
    let q = SimplePyQ::builder(SqliteStore::open(&db).expect("open"))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("build");
    q.add_channel(
        "slow",
        |_: u32| {
            std::thread::sleep(Duration::from_millis(2));
            Ok(())
        },
        2,
    )
    .expect("add");
    for i in 0..500u32 {
        q.enqueue("slow", &i).expect("enqueue");
    }
    q.start().expect("start");
    for _ in 0..3 {
        let json: Value = serde_json::from_str(&ok(&["summary", s(&db), "--json"])).expect("json");
        let total: u64 = ["pending", "running", "done"]
            .iter()
            .map(|k| json["channels"][0][k].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(total, 500);
    }
    let watched = ok(&["watch", s(&db), "--interval", "10ms", "--count", "2"]);
    assert_eq!(watched.matches("channel").count(), 2, "{watched}");
    q.stop();
}

/// A `postgres://` URL (with `?schema=`) works wherever a file does; the reading commands
/// neither create nor change a schema.
#[test]
fn postgres_urls_work_like_files() {
    use simplepyq_tests::postgres::{DropSchema, fresh_schema, options, server};
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store = simplepyq::PostgresStore::connect_with(server().conninfo(), options(&schema))
        .expect("connect");
    fill(&SimplePyQ::new(store));
    let url = format!("{}?schema={schema}", server().url());
    let json: Value = serde_json::from_str(&ok(&["summary", &url, "--json"])).expect("json");
    assert_eq!(json["channels"][0]["failed"].as_u64(), Some(2));
    assert!(ok(&["tasks", &url, "--status", "failed"]).contains("mailbox full"));
    assert!(ok(&["requeue-failed", &url, "mail"]).contains("requeued 2"));
    assert!(ok(&["purge-done", &url]).contains("deleted 3"));
    // Reading a schema that holds no queue is an error that creates nothing.
    let none = fresh_schema();
    let out = cli(
        &["summary", &format!("{}?schema={none}", server().url())],
        "",
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: bool = server()
        .client()
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&none],
        )
        .expect("look")
        .get(0);
    assert!(!created, "a reading command created the schema");
}

/// A file of the original Python simplepyq 0.1.3: the reading commands refuse it, naming
/// `import`; `import` brings it to this schema after a backup copy; once only.
#[test]
fn import_brings_a_file_of_the_original_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tasks.db");
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    conn.execute_batch(
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, \
         args BLOB, status TEXT DEFAULT 'pending', retries INTEGER DEFAULT 0, \
         delay_until INTEGER); \
         INSERT INTO tasks (channel, args, status) VALUES ('mail', X'80', 'running'); \
         INSERT INTO tasks (channel, args, status) VALUES ('mail', X'80', 'failed');",
    )
    .expect("the original's table");
    drop(conn);
    let refused = cli(&["summary", s(&path)], "");
    assert_eq!(refused.status.code(), Some(3));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("simplepyq import"), "{message}");

    let out = ok(&["import", s(&path)]);
    assert!(
        out.contains("imported 2 task(s): 1 pending, 0 delayed, 0 done, 1 failed"),
        "{out}"
    );
    assert!(out.contains("tasks.db.simplepyq-0.1.3.bak"), "{out}");
    assert!(dir.path().join("tasks.db.simplepyq-0.1.3.bak").exists());
    let json: Value = serde_json::from_str(&ok(&["summary", s(&path), "--json"])).expect("json");
    assert_eq!(json["channels"][0]["pending"].as_u64(), Some(1));

    let again = cli(&["import", s(&path)], "");
    assert_eq!(again.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to import"));
}

/// A dashboard token that a URL or a cookie would not carry as it is (`;` and `,` end the
/// cookie early; `%`, `&`, `#` or a space need encoding in `/?token=`) is refused at start,
/// with what a token may hold: such a token never matched, and the browser looped.
#[test]
fn serve_refuses_tokens_a_url_or_cookie_would_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite_queue(dir.path());
    for token in [
        "sixteen-chars-ok;x",
        "sixteen-chars-ok,x",
        "sixteen-chars%20ok",
        "sixteen chars okay",
    ] {
        let out = cli(
            &["serve", s(&db), "--addr", "127.0.0.1:0", "--token", token],
            "",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{token}: served");
        assert!(stderr.contains("each a letter"), "{token}: {stderr}");
    }
}
