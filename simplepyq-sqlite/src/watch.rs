//! News of work other processes add, for a running queue.
//!
//! On Unix, without polling: each watching queue binds a datagram socket in a folder beside
//! the file (`tasks.db-wake/`), and every store that adds tasks to the file sends, after the
//! commit, the channel's name to each socket there but its own queues' (they are woken in
//! the process). An idle queue waits in `recv`: it costs nothing. A socket whose process
//! died refuses the datagram; the sender removes it.
//!
//! Where no socket can be had (another platform, a path too long for a socket's address),
//! a thread reads `PRAGMA data_version` every interval instead (it moves when another
//! connection commits) and, when it moved, which channels got tasks since its last look.
//!
//! A channel announced less than [`QUIET`] ago is not announced again (announcing every
//! enqueue cost a fifth of the enqueue rate while another process listened). Instead each
//! listener wakes a channel a second time, twice [`QUIET`] after the last news of it: by
//! then every task enqueued in the quiet time after that news is committed.
//!
//! The folder is looked at (one `stat`) at most once per [`QUIET`] too: a socket bound
//! since is told of tasks from the next look on, and its listener wakes every channel once,
//! twice [`QUIET`] after binding, for the tasks added in between.
//!
//! A wake-up is a hint: a missed one (a full socket buffer) only leaves the task to the
//! queue's polling, as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long after announcing a channel its next tasks go unannounced.
const QUIET: Duration = Duration::from_millis(1);

/// How long a listener waits for news before it looks whether its queue stopped.
const IDLE: Duration = Duration::from_millis(100);

/// Where no socket can be had, the longest pause between two looks at the file's change
/// counter while nothing changes (the first pause after a change is the watch interval).
const LOOK_IDLE: Duration = Duration::from_millis(50);

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use simplepyq_core::{Wake, Watch};

/// The folder of the wake-up sockets of the queue file at `db`: beside it, by an absolute
/// path (a daemon that changes its directory after opening the queue still finds it).
fn folder(db: &Path) -> PathBuf {
    let mut name = std::path::absolute(db)
        .unwrap_or_else(|_| db.to_path_buf())
        .into_os_string();
    name.push("-wake");
    PathBuf::from(name)
}

/// Sends news of added tasks to the other processes' queues on the file.
#[derive(Debug)]
pub(crate) struct Announcer {
    folder: PathBuf,
    db: PathBuf,
    #[cfg(unix)]
    sender: Option<std::os::unix::net::UnixDatagram>,
    state: Mutex<Peers>,
}

#[derive(Debug, Default)]
struct Peers {
    /// The folder's modification time when `sockets` was read: a socket bound or removed
    /// since changes it.
    listed: Option<std::time::SystemTime>,
    /// When the folder was last looked at.
    looked: Option<Instant>,
    sockets: Vec<PathBuf>,
    /// The sockets of this store's own queues.
    own: Vec<PathBuf>,
    /// When each channel was last announced.
    announced: HashMap<String, Instant>,
}

impl Announcer {
    pub(crate) fn new(db: &Path) -> Self {
        Announcer {
            folder: folder(db),
            db: std::path::absolute(db).unwrap_or_else(|_| db.to_path_buf()),
            #[cfg(unix)]
            sender: std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .ok(),
            state: Mutex::new(Peers::default()),
        }
    }

    /// Tells the other processes' queues that `channels` (each named once) got tasks. Costs
    /// one `stat` of the folder when no other queue listens.
    pub(crate) fn announce<'a>(&self, channels: impl IntoIterator<Item = &'a str>) {
        #[cfg(unix)]
        {
            let Some(sender) = &self.sender else {
                return;
            };
            let now = Instant::now();
            let mut peers = self.state.lock();
            let channels: Vec<&str> = channels
                .into_iter()
                .filter(|c| peers.announced.get(*c).is_none_or(|at| now - *at >= QUIET))
                .collect();
            if channels.is_empty() {
                return;
            }
            if peers.looked.is_none_or(|at| now - at >= QUIET) {
                peers.looked = Some(now);
                let Ok(listed) = std::fs::metadata(&self.folder).and_then(|m| m.modified()) else {
                    peers.sockets.clear();
                    peers.listed = None;
                    return; // no folder: no queue listens
                };
                if peers.listed != Some(listed) {
                    peers.sockets = if trusted(&self.folder, &self.db, None) {
                        sockets_in(&self.folder)
                    } else {
                        Vec::new()
                    };
                    peers.listed = Some(listed);
                }
            }
            let Peers {
                sockets,
                own,
                announced,
                ..
            } = &mut *peers;
            let others: Vec<&PathBuf> = sockets.iter().filter(|s| !own.contains(s)).collect();
            if others.is_empty() {
                return;
            }
            // Only the recent ones matter: a queue of ever new channel names (one per
            // tenant, say) does not keep every name it announced.
            if announced.len() >= 1_024 {
                announced.retain(|_, at| now - *at < QUIET);
            }
            for channel in &channels {
                announced.insert((*channel).to_owned(), now);
            }
            for socket in others {
                for channel in &channels {
                    if let Err(e) = sender.send_to(channel.as_bytes(), socket) {
                        // Nobody bound it: its process died without removing it. (Only
                        // sockets are listed: a link planted there is neither sent to nor
                        // followed.)
                        if e.kind() == std::io::ErrorKind::ConnectionRefused {
                            let _ = std::fs::remove_file(socket);
                        }
                        break;
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = channels;
        }
    }
}

/// The sockets in the folder: entries named `*.sock` that are sockets themselves (not links
/// to one, nor anything else).
#[cfg(unix)]
fn sockets_in(folder: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the wake-up folder may be used: a folder (not a link to one) owned by the queue
/// file's owner, or by this process (`own`: a socket it bound there). In a shared
/// directory (`/tmp/tasks.db`) another user could make the folder first, read every channel
/// name announced to it and plant files there; such a folder is left alone, and the queue
/// polls.
#[cfg(unix)]
fn trusted(folder: &Path, db: &Path, own: Option<&Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(folder) else {
        return false;
    };
    let owner = |p: &Path| std::fs::metadata(p).ok().map(|m| m.uid());
    let own = own.and_then(|p| std::fs::symlink_metadata(p).ok().map(|m| m.uid()));
    meta.is_dir() && (owner(db) == Some(meta.uid()) || own == Some(meta.uid()))
}

/// Makes the wake-up folder of the queue file at `db`, with the file's permissions (and
/// search where it grants reading; owner-only if the file cannot be read): only who may use
/// the file may bind or list sockets.
#[cfg(unix)]
fn make_folder(folder: &Path, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let file = std::fs::metadata(db).map_or(0o600, |m| m.permissions().mode() & 0o777);
    let mode = file | ((file & 0o444) >> 2);
    match std::fs::DirBuilder::new().mode(mode).create(folder) {
        // The umask may have taken bits off that the file grants.
        Ok(()) => std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// What tells this process's sockets apart from every other's: its id, which containers
/// sharing a volume repeat (each main process is PID 1), and a random number.
#[cfg(unix)]
fn process_tag() -> &'static str {
    use std::hash::{BuildHasher, Hasher};
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u32(std::process::id());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        random.write_u128(nanos);
        format!("{}-{:016x}", std::process::id(), random.finish())
    })
}

/// Starts watching the file at `db` for tasks other processes add: by a socket where one can
/// be had, else by looking every `interval`. `None` if neither can be started (the queue
/// then only polls).
pub(crate) fn watch(
    db: &Path,
    interval: Duration,
    wake: Wake,
    announcer: &Arc<Announcer>,
) -> Option<Watch> {
    #[cfg(unix)]
    if let Some(watch) = listen(announcer, Wake::clone(&wake)) {
        return Some(watch);
    }
    #[cfg(not(unix))]
    let _ = announcer;
    look_every(db, interval, wake)
}

/// Binds a socket in the folder and wakes channels by the names it receives.
#[cfg(unix)]
fn listen(announcer: &Arc<Announcer>, wake: Wake) -> Option<Watch> {
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);

    make_folder(&announcer.folder, &announcer.db).ok()?;
    let name = announcer.folder.join(format!(
        "{}-{}.sock",
        process_tag(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // A name no other process has: a bind that fails leaves the file to whoever has it.
    let socket = UnixDatagram::bind(&name).ok()?;
    if !trusted(&announcer.folder, &announcer.db, Some(&name)) {
        let _ = std::fs::remove_file(&name);
        return None;
    }
    socket.set_read_timeout(Some(IDLE)).ok()?;
    announcer.state.lock().own.push(name.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let socket_name = name.clone();
    let spawned = std::thread::Builder::new()
        .name("simplepyq-sqlite-watch".into())
        .spawn(move || {
            // Channel names are at most 255 bytes; a longer datagram is not one of ours.
            let mut buf = [0u8; 256];
            // The second wake-up of each channel with recent news, and of every channel
            // for the tasks added before the senders saw this socket.
            let mut again: HashMap<Option<String>, Instant> =
                HashMap::from([(None, Instant::now() + QUIET * 2)]);
            let mut timeout = IDLE;
            while !stopped.load(Ordering::Relaxed) {
                let now = Instant::now();
                again.retain(|channel, at| {
                    let due = *at <= now;
                    if due {
                        wake(channel.as_deref());
                    }
                    !due
                });
                let next = again
                    .values()
                    .min()
                    .map_or(IDLE, |at| *at - now)
                    .max(QUIET / 4);
                if next != timeout && socket.set_read_timeout(Some(next)).is_ok() {
                    timeout = next;
                }
                match socket.recv(&mut buf) {
                    Ok(n) if n < buf.len() => {
                        if let Ok(channel) = std::str::from_utf8(&buf[..n]) {
                            wake(Some(channel));
                            again.insert(Some(channel.to_owned()), Instant::now() + QUIET * 2);
                        }
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    // Not expected of a bound socket; do not spin on it.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            let _ = std::fs::remove_file(&socket_name);
        });
    let announcer = Arc::clone(announcer);
    if spawned.is_err() {
        announcer.state.lock().own.retain(|s| *s != name);
        let _ = std::fs::remove_file(&name);
        return None;
    }
    Some(Watch::new(move || {
        stop.store(true, Ordering::Relaxed);
        announcer.state.lock().own.retain(|s| *s != name);
    }))
}

/// Looks at the file's change counter every `interval` (spacing the looks out to
/// [`LOOK_IDLE`] while it does not move), and when it moved, at the channels with new task
/// ids.
fn look_every(db: &Path, interval: Duration, wake: Wake) -> Option<Watch> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let (conn, mut last_id) = crate::fork::within(|| {
        let conn = Connection::open_with_flags(db, flags).ok()?;
        crate::wait_for_locks(&conn, interval).ok()?;
        let last_id = newest_id(&conn).ok()?;
        Some((conn, last_id))
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("simplepyq-sqlite-watch".into())
        .spawn(move || {
            let mut seen = crate::fork::within(|| data_version(&conn)).unwrap_or(0);
            // While nothing changes, the looks space out, doubling up to LOOK_IDLE.
            let mut pause = interval;
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(pause);
                pause = (pause * 2).min(LOOK_IDLE.max(interval));
                // A failed look (the file busy, say) is tried again at the next one.
                let Ok(version) = crate::fork::within(|| data_version(&conn)) else {
                    continue;
                };
                if version == seen {
                    continue;
                }
                pause = interval;
                if let Ok(added) = crate::fork::within(|| added_since(&conn, last_id)) {
                    seen = version;
                    for (channel, id) in added {
                        last_id = last_id.max(id);
                        wake(Some(&channel));
                    }
                }
            }
        })
        .ok()?;
    Some(Watch::new(move || stop.store(true, Ordering::Relaxed)))
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

fn newest_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(id), 0) FROM simplepyq_tasks",
        [],
        |r| r.get(0),
    )
}

/// The channels with tasks of ids above `after`, and the newest id of each.
fn added_since(conn: &Connection, after: i64) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT channel, MAX(id) FROM simplepyq_tasks WHERE id > ?1 GROUP BY channel",
    )?;
    let rows = stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A channel announced twice within the quiet time is sent once; the listener wakes it
    /// at once and again twice the quiet time later, so that the unannounced task is found.
    /// It also wakes every channel once, twice the quiet time after binding, for tasks
    /// added before the senders looked at the folder again.
    #[test]
    fn a_listener_wakes_again_after_the_quiet_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store_file(dir.path());
        let mine = Arc::new(Announcer::new(&db));
        let wakes: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let w = Arc::clone(&wakes);
        let wake: Wake = Arc::new(move |channel: Option<&str>| {
            w.lock()
                .push((channel.unwrap_or("*").to_owned(), Instant::now()));
        });
        let bound = Instant::now();
        let watch = listen(&mine, wake).expect("listening");
        // This store's own queue is not told of this store's work.
        mine.announce(["own"]);
        let theirs = Announcer::new(&db);
        let before = Instant::now();
        theirs.announce(["a"]);
        theirs.announce(["a"]);
        // On a loaded machine the two calls may be further apart than the quiet time: then
        // both are sent, and that is right.
        let within_quiet = before.elapsed() < QUIET;
        let of_a = |w: &[(String, Instant)]| -> Vec<Instant> {
            w.iter()
                .filter(|(c, _)| c == "a")
                .map(|(_, at)| *at)
                .collect()
        };
        let t0 = Instant::now();
        loop {
            let seen = wakes.lock().clone();
            let a = of_a(&seen);
            let every = seen.iter().any(|(c, _)| c == "*");
            if every && a.len() >= 2 && *a.last().expect("two") - a[0] >= QUIET * 2 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{seen:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(QUIET * 10);
        let seen = wakes.lock().clone();
        let every: Vec<_> = seen.iter().filter(|(c, _)| c == "*").collect();
        assert_eq!(every.len(), 1, "{every:?}");
        assert!(every[0].1 - bound >= QUIET * 2, "{every:?}");
        // The own channel is never heard; "a" at once, and again twice the quiet time later.
        assert!(seen.iter().all(|(c, _)| c == "a" || c == "*"), "{seen:?}");
        if within_quiet {
            assert_eq!(of_a(&seen).len(), 2, "{seen:?}");
        }
        drop(watch);
    }

    fn store_file(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let db = dir.join("q.db");
        std::fs::write(&db, b"").expect("the file");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        db
    }

    /// Two containers sharing a volume each run their queue as PID 1: a socket another
    /// process bound under this process's id is neither removed nor taken over, and still
    /// hears the news; the folder has the queue file's permissions, not the umask's.
    #[test]
    fn sockets_of_another_process_with_the_same_id_are_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store_file(dir.path());
        let wake_dir = folder(&db);
        std::fs::create_dir(&wake_dir).expect("folder");
        // The other container's queue, under every name this process's could have had.
        let theirs: Vec<UnixDatagram> = (0..64)
            .map(|n| {
                let name = wake_dir.join(format!("{}-{n}.sock", std::process::id()));
                let s = UnixDatagram::bind(&name).expect("bind");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        let mine = Arc::new(Announcer::new(&db));
        let watch = listen(&mine, Arc::new(|_: Option<&str>| {})).expect("listening");
        Announcer::new(&db).announce(["news"]);
        let heard = theirs
            .iter()
            .filter(|s| {
                let mut buf = [0u8; 16];
                s.recv(&mut buf).is_ok()
            })
            .count();
        assert_eq!(
            heard,
            theirs.len(),
            "a socket of the other process went deaf"
        );
        drop(watch);
        // A fresh folder takes the queue file's permissions.
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store_file(dir.path());
        let watch = listen(
            &Arc::new(Announcer::new(&db)),
            Arc::new(|_: Option<&str>| {}),
        )
        .expect("listening");
        let mode = std::fs::metadata(folder(&db))
            .expect("folder")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(watch);
    }

    /// A link planted in the folder (`x.sock -> /dev/log`) is neither sent to nor
    /// removed; a folder owned by another user is not used at all.
    #[test]
    fn links_and_foreign_folders_hear_nothing() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store_file(dir.path());
        let wake_dir = folder(&db);
        std::fs::create_dir(&wake_dir).expect("folder");
        let victim_path = dir.path().join("victim.sock");
        let victim = UnixDatagram::bind(&victim_path).expect("bind");
        victim.set_nonblocking(true).expect("nonblocking");
        std::os::unix::fs::symlink(&victim_path, wake_dir.join("x.sock")).expect("link");
        Announcer::new(&db).announce(["secret"]);
        let mut buf = [0u8; 16];
        assert!(
            victim.recv(&mut buf).is_err(),
            "sent through a planted link"
        );
        assert!(std::fs::symlink_metadata(wake_dir.join("x.sock")).is_ok());
        // Another user's folder (as root, the test can make one).
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store_file(dir.path());
        let wake_dir = folder(&db);
        std::fs::create_dir(&wake_dir).expect("folder");
        match std::os::unix::fs::chown(&wake_dir, Some(54_321), None) {
            Ok(()) => {
                let found = listen(
                    &Arc::new(Announcer::new(&db)),
                    Arc::new(|_: Option<&str>| {}),
                );
                assert!(found.is_none(), "listened in another user's folder");
                assert_eq!(sockets_in(&wake_dir).len(), 0);
            }
            Err(e) => eprintln!("skipped the foreign folder case (chown needs root): {e}"),
        }
    }
}
