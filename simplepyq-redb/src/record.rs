//! The bytes of one task as stored in the `tasks` table.
//!
//! ```text
//! u8 format (5) | u8 status | u32 retries_left | u32 max_retries | u32 attempts
//! u32 lost_runs                                    (format 3 on; 0 before)
//! i64 run_at | i64 lease_until (i64::MIN: none) | i64 created_at | i64 updated_at
//! i32 priority                                     (format 2 on; 0 in format 1)
//! u32 channel length, channel bytes (UTF-8)
//! u32 error length + 1 (0: none), error bytes (UTF-8)
//! u32 unique key length + 1 (0: none), key bytes   (format 2 on; none in format 1)
//! u32 concurrency key length + 1 (0: none), bytes  (format 4 on; none before)
//! u64 timeout in milliseconds (0: none)            (format 4 on; none before)
//! u32 traceparent length + 1 (0: none), bytes      (format 5 on; none before)
//! args: the rest
//! ```
//! All integers little-endian. Decoding checks every length against the bytes it has, so
//! damaged records give an error, never a panic or an allocation larger than the record.

use simplepyq_core::{Status, Task, TaskId, TaskState, Timestamp};

const FORMAT: u8 = 5;
/// The first format, without priority and unique key; still read.
const FORMAT_1: u8 = 1;
/// The second format, without lost runs; still read.
const FORMAT_2: u8 = 2;
/// The third format, without concurrency key; still read.
const FORMAT_3: u8 = 3;
/// The fourth format, without trace context; still read.
const FORMAT_4: u8 = 4;
const NO_LEASE: i64 = i64::MIN;

/// The one-byte code of a status, as stored in records and index keys.
pub(crate) fn status_code(s: Status) -> u8 {
    match s {
        Status::Pending => 0,
        Status::Running => 1,
        Status::Delayed => 2,
        Status::Done => 3,
        Status::Failed => 4,
        Status::Waiting => 5,
    }
}

pub(crate) fn status_from_code(code: u8) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status_code(*s) == code)
}

/// Encodes `task` (its id is the table key, not part of the record).
pub(crate) fn encode(task: &Task) -> Vec<u8> {
    let s = &task.state;
    let error = s.last_error.as_deref();
    let key = task.unique_key.as_deref();
    let concurrency = task.concurrency_key.as_deref();
    let traceparent = task.traceparent.as_deref();
    let texts = task.channel.len()
        + error.map_or(0, str::len)
        + key.map_or(0, str::len)
        + concurrency.map_or(0, str::len)
        + traceparent.map_or(0, str::len);
    let mut out = Vec::with_capacity(82 + texts + task.args.len());
    out.push(FORMAT);
    out.push(status_code(s.status));
    for v in [s.retries_left, s.max_retries, s.attempts, s.lost_runs] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let lease = s.lease_until.map_or(NO_LEASE, Timestamp::as_millis);
    for v in [
        s.run_at.as_millis(),
        lease,
        task.created_at.as_millis(),
        s.updated_at.as_millis(),
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&task.priority.to_le_bytes());
    put_len(&mut out, task.channel.len());
    out.extend_from_slice(task.channel.as_bytes());
    put_optional(&mut out, error);
    put_optional(&mut out, key);
    put_optional(&mut out, concurrency);
    let timeout = task
        .timeout
        .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    out.extend_from_slice(&timeout.to_le_bytes());
    put_optional(&mut out, traceparent);
    out.extend_from_slice(&task.args);
    out
}

fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.extend_from_slice(&0u32.to_le_bytes()),
        Some(t) => {
            put_len(out, t.len() + 1);
            out.extend_from_slice(t.as_bytes());
        }
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // redb refuses values over 3 GiB, so no stored length exceeds u32::MAX.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

/// Why a record could not be decoded.
pub(crate) type DecodeError = &'static str;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err("the record is shorter than its fields");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, len: u32) -> Result<&'a str, DecodeError> {
        let len = usize::try_from(len).map_err(|_| "a length does not fit in memory")?;
        std::str::from_utf8(self.take(len)?).map_err(|_| "a text field is not UTF-8")
    }

    fn optional(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u32()? {
            0 => Ok(None),
            n => Ok(Some(self.str(n - 1)?.to_owned())),
        }
    }
}

/// Decodes the record of task `id`.
pub(crate) fn decode(id: TaskId, bytes: &[u8]) -> Result<Task, DecodeError> {
    let mut r = Reader(bytes);
    let format = r.u8()?;
    if ![FORMAT_1, FORMAT_2, FORMAT_3, FORMAT_4, FORMAT].contains(&format) {
        return Err("unknown record format");
    }
    let status = status_from_code(r.u8()?).ok_or("unknown status code")?;
    let (retries_left, max_retries, attempts) = (r.u32()?, r.u32()?, r.u32()?);
    let lost_runs = if format >= FORMAT_3 { r.u32()? } else { 0 };
    let (run_at, lease, created_at, updated_at) = (r.i64()?, r.i64()?, r.i64()?, r.i64()?);
    let priority = if format == FORMAT_1 {
        0
    } else {
        i32::from_le_bytes(r.array()?)
    };
    let channel_len = r.u32()?;
    let channel = r.str(channel_len)?.to_owned();
    let last_error = r.optional()?;
    let unique_key = if format == FORMAT_1 {
        None
    } else {
        r.optional()?
    };
    let (concurrency_key, timeout) = if format >= FORMAT_4 {
        let key = r.optional()?;
        let ms = u64::from_le_bytes(r.array()?);
        (key, (ms > 0).then(|| std::time::Duration::from_millis(ms)))
    } else {
        (None, None)
    };
    let traceparent = if format >= FORMAT {
        r.optional()?
    } else {
        None
    };
    Ok(Task {
        id,
        channel,
        args: r.0.to_vec(),
        created_at: Timestamp::from_millis(created_at),
        priority,
        unique_key,
        concurrency_key,
        timeout,
        traceparent,
        state: TaskState {
            status,
            retries_left,
            max_retries,
            attempts,
            lost_runs,
            run_at: Timestamp::from_millis(run_at),
            lease_until: (lease != NO_LEASE).then(|| Timestamp::from_millis(lease)),
            last_error,
            updated_at: Timestamp::from_millis(updated_at),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn task() -> impl Strategy<Value = Task> {
        (
            (
                1i64..i64::MAX,
                "[a-z:/]{1,40}",
                any::<Vec<u8>>(),
                any::<i64>(),
            ),
            (0usize..6, any::<u32>(), any::<u32>(), any::<(u32, u32)>()),
            (any::<i64>(), proptest::option::of(i64::MIN + 1..i64::MAX)),
            (proptest::option::of(".{0,80}"), any::<i64>()),
            (
                any::<i32>(),
                proptest::option::of(".{0,20}"),
                proptest::option::of(".{1,20}"),
                proptest::option::of(1u64..u64::MAX),
                proptest::option::of("[0-9a-f-]{55}"),
            ),
        )
            .prop_map(
                |(
                    (id, channel, args, created),
                    (status, retries_left, max_retries, (attempts, lost_runs)),
                    (run_at, lease),
                    (last_error, updated),
                    (priority, unique_key, concurrency_key, timeout, traceparent),
                )| Task {
                    id: TaskId::new(id),
                    channel,
                    args,
                    created_at: Timestamp::from_millis(created),
                    priority,
                    unique_key,
                    concurrency_key,
                    timeout: timeout.map(std::time::Duration::from_millis),
                    traceparent,
                    state: TaskState {
                        status: Status::ALL[status],
                        retries_left,
                        max_retries,
                        attempts,
                        lost_runs,
                        run_at: Timestamp::from_millis(run_at),
                        lease_until: lease.map(Timestamp::from_millis),
                        last_error,
                        updated_at: Timestamp::from_millis(updated),
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn records_round_trip(t in task()) {
            prop_assert_eq!(decode(t.id, &encode(&t)), Ok(t));
        }

        #[test]
        fn damaged_records_are_errors_not_panics(
            t in task(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let bytes = encode(&t);
            let _ = decode(t.id, &bytes[..cut.index(bytes.len())]);
            let mut flipped = bytes;
            let at = flip.0.index(flipped.len());
            flipped[at] ^= flip.1;
            let _ = decode(t.id, &flipped);
        }

        #[test]
        fn random_bytes_never_panic(bytes in any::<Vec<u8>>()) {
            let _ = decode(TaskId::new(1), &bytes);
        }
    }

    #[test]
    fn a_truncated_record_is_an_error() {
        let t = simplepyq_core::NewTask::new("c", vec![]).to_task(TaskId::new(1), Timestamp::EPOCH);
        let bytes = encode(&t);
        assert_eq!(
            decode(t.id, &bytes[..bytes.len() - 1]),
            Err("the record is shorter than its fields")
        );
    }

    /// A record as format 1 wrote it: no priority, no unique key.
    pub(crate) fn encode_format_1(t: &Task) -> Vec<u8> {
        let s = &t.state;
        let mut v1 = vec![FORMAT_1, status_code(s.status)];
        for n in [s.retries_left, s.max_retries, s.attempts] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        let lease = s.lease_until.map_or(NO_LEASE, Timestamp::as_millis);
        for n in [
            s.run_at.as_millis(),
            lease,
            t.created_at.as_millis(),
            s.updated_at.as_millis(),
        ] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        put_len(&mut v1, t.channel.len());
        v1.extend_from_slice(t.channel.as_bytes());
        put_optional(&mut v1, s.last_error.as_deref());
        v1.extend_from_slice(&t.args);
        v1
    }

    #[test]
    fn format_1_records_still_decode() {
        let mut t = simplepyq_core::NewTask::new("c", vec![0x90])
            .retries(2)
            .to_task(TaskId::new(7), Timestamp::from_millis(10));
        t.state.last_error = Some("boom".into());
        let decoded = decode(t.id, &encode_format_1(&t)).expect("format 1 decodes");
        assert_eq!(decoded, t);
    }

    #[test]
    fn format_2_records_still_decode() {
        let mut t = simplepyq_core::NewTask::new("c", vec![0x90])
            .retries(2)
            .priority(4)
            .unique_key("k")
            .to_task(TaskId::new(7), Timestamp::from_millis(10));
        t.state.attempts = 3;
        let mut v2 = encode(&t);
        // Format 2 had no concurrency key, timeout nor trace context before the arguments
        // (one byte here), nor a lost-run count after the attempts.
        v2[0] = FORMAT_2;
        let args_at = v2.len() - 1;
        v2.drain(args_at - 16..args_at);
        v2.drain(14..18);
        assert_eq!(decode(t.id, &v2), Ok(t));
    }

    #[test]
    fn format_3_records_still_decode() {
        let mut t = simplepyq_core::NewTask::new("c", vec![0x90])
            .unique_key("k")
            .to_task(TaskId::new(7), Timestamp::from_millis(10));
        t.state.lost_runs = 2;
        let mut v3 = encode(&t);
        // Format 3 had no concurrency key, timeout nor trace context before the arguments
        // (one byte here).
        v3[0] = FORMAT_3;
        let args_at = v3.len() - 1;
        v3.drain(args_at - 16..args_at);
        assert_eq!(decode(t.id, &v3), Ok(t));
    }

    #[test]
    fn format_4_records_still_decode() {
        let t = simplepyq_core::NewTask::new("c", vec![0x90])
            .concurrency_key("k")
            .timeout(std::time::Duration::from_secs(3))
            .to_task(TaskId::new(7), Timestamp::from_millis(10));
        let mut v4 = encode(&t);
        // Format 4 had no trace context before the arguments (one byte here).
        v4[0] = FORMAT_4;
        let args_at = v4.len() - 1;
        v4.drain(args_at - 4..args_at);
        assert_eq!(decode(t.id, &v4), Ok(t));
    }
}
