//! Inspection: channels, counts, tasks, what finished when, and the totals.

use std::collections::BTreeMap;

use redb::ReadableTable;
use simplepyq_core::{
    Claim, Counts, InspectStore, ListFilter, Result, Stuck, Task, TaskId, Timestamp, Totals,
};

use crate::error::{corrupt, db_err};
use crate::flow::existing;
use crate::record::{self, status_from_code};
use crate::tables::{
    BY_STATUS, COUNTS, RESULTS, STUCK, TASKS, TOTALS, channel_names, status_pairs, stored_totals,
};
use crate::{RedbStore, to_id, to_key};

impl InspectStore for RedbStore {
    fn channels(&self) -> Result<Vec<String>> {
        self.read(channel_names)
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        self.read(|read| {
            let table = match read.open_table(COUNTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Counts::default()),
                Err(e) => return Err(db_err(e)),
            };
            let entries = match channel {
                Some(ch) => table.range((ch, 0)..=(ch, u8::MAX)),
                None => table.iter(),
            }
            .map_err(db_err)?;
            let mut counts = Counts::default();
            for entry in entries {
                let (key, n) = entry.map_err(db_err)?;
                let code = key.value().1;
                let status = status_from_code(code)
                    .ok_or_else(|| corrupt(format!("unknown status code {code} in counts")))?;
                *counts.get_mut(status) += usize::try_from(n.value()).unwrap_or(usize::MAX);
            }
            Ok(counts)
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.read(|read| {
            let tasks = read.open_table(TASKS).map_err(db_err)?;
            let Some(bytes) = tasks.get(to_key(id)).map_err(db_err)? else {
                return Ok(None);
            };
            record::decode(id, bytes.value())
                .map(Some)
                .map_err(|e| corrupt(format!("task {id}: {e}")))
        })
    }

    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>> {
        self.read(|read| {
            let Some(results) = existing(read.open_table(RESULTS))? else {
                return Ok(None);
            };
            let result = results.get(to_key(id)).map_err(db_err)?;
            Ok(result.map(|r| r.value().to_vec()))
        })
    }

    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.read(|read| crate::dependency::parents(read, id))
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        self.read(|read| {
            let tasks = read.open_table(TASKS).map_err(db_err)?;
            let first = filter.after.map_or(0, |a| to_key(a).saturating_add(1));
            let decode = |key: u64, bytes: &[u8]| {
                let id = to_id(key)?;
                record::decode(id, bytes).map_err(|e| corrupt(format!("task {id}: {e}")))
            };
            if filter.channel.is_none() && filter.status.is_none() {
                // Every task matches: the first `limit` in id order.
                let mut out = Vec::new();
                for entry in tasks.range(first..).map_err(db_err)?.take(filter.limit) {
                    let (key, bytes) = entry.map_err(db_err)?;
                    out.push(decode(key.value(), bytes.value())?);
                }
                return Ok(out);
            }
            // The ids come from the status index, whose keys are (channel, status, id):
            // the first `limit` of each pair the filter names, merged; only those tasks
            // are read.
            let pairs = status_pairs(read, filter)?;
            let by_status = read.open_table(BY_STATUS).map_err(db_err)?;
            let mut ids = Vec::new();
            for (channel, code) in &pairs {
                let range = by_status
                    .range((channel.as_str(), *code, first)..=(channel.as_str(), *code, u64::MAX))
                    .map_err(db_err)?;
                for entry in range.take(filter.limit) {
                    ids.push(entry.map_err(db_err)?.0.value().2);
                }
            }
            ids.sort_unstable();
            ids.truncate(filter.limit);
            let mut out = Vec::with_capacity(ids.len());
            for key in ids {
                let bytes = tasks
                    .get(key)
                    .map_err(db_err)?
                    .ok_or_else(|| corrupt(format!("task {key} is indexed but missing")))?;
                out.push(decode(key, bytes.value())?);
            }
            Ok(out)
        })
    }

    fn totals(&self) -> Result<BTreeMap<String, Totals>> {
        self.read(|read| {
            let table = match read.open_table(TOTALS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
                Err(e) => return Err(db_err(e)),
            };
            let mut totals = BTreeMap::new();
            for entry in table.iter().map_err(db_err)? {
                let (channel, counts) = entry.map_err(db_err)?;
                totals.insert(channel.value().to_owned(), stored_totals(counts.value()));
            }
            Ok(totals)
        })
    }

    fn stuck(&self, channel: Option<&str>) -> Result<Vec<Stuck>> {
        self.read(|read| {
            let Some(marks) = existing(read.open_table(STUCK))? else {
                return Ok(Vec::new());
            };
            let tasks = read.open_table(TASKS).map_err(db_err)?;
            let mut stuck = Vec::new();
            for entry in marks.iter().map_err(db_err)? {
                let (key, mark) = entry.map_err(db_err)?;
                let id = to_id(key.value())?;
                let (attempt, since) = mark.value();
                let Some(bytes) = tasks.get(key.value()).map_err(db_err)? else {
                    continue;
                };
                let task = record::decode(id, bytes.value())
                    .map_err(|e| corrupt(format!("task {id}: {e}")))?;
                if (Claim { id, attempt }).holds(&task.state)
                    && channel.is_none_or(|c| c == task.channel)
                {
                    stuck.push(Stuck {
                        id,
                        channel: task.channel,
                        attempt,
                        since: Timestamp::from_millis(since),
                    });
                }
            }
            Ok(stuck)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use simplepyq_core::{
        ClaimStore, Error, InspectStore, ListFilter, NewTask, Status, StoreExt, TaskId, Timestamp,
    };

    use crate::RedbStore;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    /// A list filtered by channel or status follows the status index: it reads only the
    /// records it returns (a damaged record of another status is not even decoded), in id
    /// order across channels and statuses, a page at a time.
    #[test]
    fn a_filtered_list_reads_only_the_tasks_it_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStore::open(dir.path().join("q.redb")).expect("create");
        let ids = store
            .enqueue(
                &["a", "b", "a", "b", "a"].map(|c| NewTask::new(c, vec![])),
                T0,
            )
            .expect("enqueue");
        for t in store.claim("a", 1, T0, T0).expect("claim") {
            store.complete(t.claim(), T0).expect("complete");
        }
        {
            let db = store.database().expect("database");
            let tx = db.begin_write().expect("write");
            tx.open_table(TASKS)
                .expect("tasks")
                .insert(to_key(ids[4]), &b"damaged"[..])
                .expect("damage");
            tx.commit().expect("commit");
        }
        let list = |channel: Option<&str>, status: Option<Status>, after: Option<TaskId>, limit| {
            let mut filter = ListFilter::new(limit);
            filter.channel = channel.map(str::to_owned);
            filter.status = status;
            filter.after = after;
            store
                .list(&filter)
                .map(|tasks| tasks.iter().map(|t| t.id).collect::<Vec<_>>())
        };
        let done = Some(Status::Done);
        let pending = Some(Status::Pending);
        assert_eq!(list(Some("a"), done, None, 10).expect("done"), [ids[0]]);
        assert_eq!(list(None, done, None, 10).expect("done"), [ids[0]]);
        assert_eq!(
            list(Some("b"), None, None, 10).expect("b"),
            [ids[1], ids[3]]
        );
        assert_eq!(
            list(None, pending, None, 2).expect("page 1"),
            [ids[1], ids[2]]
        );
        assert_eq!(
            list(None, pending, Some(ids[2]), 1).expect("page 2"),
            [ids[3]]
        );
        // The damaged record is read when it is selected.
        let err = list(None, pending, Some(ids[3]), 1).expect_err("damaged");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
