//! Flow control from a queue: pausing and resuming a channel, and limiting its running
//! tasks, for every process and machine sharing the store.

use std::collections::BTreeMap;

use simplepyq_core::{Flow, Rate, Result, Store, StoreExt};

use crate::queue::SimplePyQ;

impl<S: Store> SimplePyQ<S> {
    /// Pauses `channel` for every process and machine sharing the store, durably (until
    /// [`SimplePyQ::resume`], also across restarts): no worker anywhere starts another of
    /// its tasks once the pause is committed, but for the tasks of claims already under way
    /// (at most one claim per process, of at most its idle workers). Running handlers
    /// finish; tasks stay queued; enqueueing goes on; [`SimplePyQ::run_until_complete`]
    /// waits for the resume. Returns whether it was running before.
    ///
    /// [`Error::UnknownChannel`](crate::Error::UnknownChannel) for a channel that has no
    /// handler here and of which the store knows nothing (no task, no setting): most
    /// likely a misspelt name.
    ///
    /// ```
    /// # let q = simplepyq::SimplePyQ::memory();
    /// q.add_channel("emails", |to: String| { println!("{to}"); Ok(()) }, 2)?;
    /// q.pause("emails")?;                       // the mail provider is down
    /// q.enqueue("emails", "ada@example.com")?;  // kept, not sent
    /// assert!(q.is_paused("emails")?);
    /// q.resume("emails")?;                      // sent once a worker runs
    /// q.run_until_complete()?;
    /// assert_eq!(q.counts("emails")?.done, 1);
    /// # Ok::<(), simplepyq::Error>(())
    /// ```
    pub fn pause(&self, channel: &str) -> Result<bool> {
        let known_here = self.workers.has(channel);
        self.workers
            .engine
            .store
            .pause_known(channel, true, known_here)
    }

    /// Resumes a paused `channel` for every process and machine sharing the store: idle
    /// workers here are woken at once, those of other processes by the store's wake-ups
    /// (within milliseconds) or at their next poll. Returns whether it was paused.
    /// [`Error::UnknownChannel`](crate::Error::UnknownChannel) as [`SimplePyQ::pause`].
    pub fn resume(&self, channel: &str) -> Result<bool> {
        let engine = &self.workers.engine;
        let known_here = self.workers.has(channel);
        let changed = engine.store.pause_known(channel, false, known_here)?;
        engine.wake(channel, true);
        Ok(changed)
    }

    /// Sets how many of `channel`'s tasks may run at once across every process and machine
    /// sharing the store (`None`: no limit), durably, changeable while workers run: "at
    /// most 5 calls to the payment provider across the fleet". The limit is kept in the
    /// claim itself: claims of all processes together never leave more than `max` running
    /// (tasks claimed ahead count); a task holds its slot until its outcome is recorded, or
    /// its lease expires after a crash. Lowering it stops no running task. Returns whether
    /// it changed.
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for `Some(0)` (pause the
    /// channel instead), [`Error::UnknownChannel`](crate::Error::UnknownChannel) as
    /// [`SimplePyQ::pause`].
    ///
    /// ```
    /// # let q = simplepyq::SimplePyQ::memory();
    /// q.add_channel("payments", |_: u64| Ok(()), 8)?;
    /// q.set_max_running("payments", Some(5))?; // 8 workers here, at most 5 calls anywhere
    /// # Ok::<(), simplepyq::Error>(())
    /// ```
    pub fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool> {
        let engine = &self.workers.engine;
        let changed = engine
            .store
            .limit_known(channel, max, self.workers.has(channel))?;
        engine.note_limited(channel, max.is_some());
        engine.wake(channel, true);
        Ok(changed)
    }

    /// Sets how many of `channel`'s tasks with the same concurrency key
    /// ([`EnqueueOptions::concurrency_key`](crate::EnqueueOptions::concurrency_key)) may
    /// run at once across every process and machine sharing the store (default 1: one at a
    /// time per key), durably, changeable while workers run: "one job per customer at a
    /// time". Kept in the claim itself, as [`SimplePyQ::set_max_running`] is: a claim skips
    /// a task whose key is busy and takes the next one, so that a busy key holds up no
    /// other key's tasks. Returns whether it changed.
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for 0,
    /// [`Error::UnknownChannel`](crate::Error::UnknownChannel) as [`SimplePyQ::pause`].
    ///
    /// ```
    /// use simplepyq::EnqueueOptions;
    /// # let q = simplepyq::SimplePyQ::memory();
    /// q.add_channel("sync", |_: u64| Ok(()), 8)?;
    /// q.set_max_running_per_key("sync", 2)?; // two syncs per customer at a time
    /// q.enqueue_with("sync", &1, EnqueueOptions::new().concurrency_key("customer-7"))?;
    /// # Ok::<(), simplepyq::Error>(())
    /// ```
    pub fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool> {
        let engine = &self.workers.engine;
        let changed = engine
            .store
            .limit_per_key_known(channel, max, self.workers.has(channel))?;
        engine.wake(channel, true);
        Ok(changed)
    }

    /// Sets how many of `channel`'s tasks may start per window of time across every process
    /// and machine sharing the store (`None`: no limit), durably, changeable while workers
    /// run: "no more than 100 requests a minute to that API". The windows are laid end to
    /// end from the Unix epoch (`Rate::new(100, 60 s)`: each whole minute of the store's
    /// clock); each claim of a task counts as a start, counted in the claim itself, so that
    /// claims of all processes together start at most `starts` in a window. While a window
    /// is used up, idle workers sleep until it ends (no polling). Returns whether it
    /// changed.
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for 0 starts or a window under a
    /// millisecond, [`Error::UnknownChannel`](crate::Error::UnknownChannel) as
    /// [`SimplePyQ::pause`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use simplepyq::Rate;
    /// # let q = simplepyq::SimplePyQ::memory();
    /// q.add_channel("api", |_: u64| Ok(()), 8)?;
    /// q.set_rate("api", Some(Rate::new(100, Duration::from_secs(60))))?;
    /// # Ok::<(), simplepyq::Error>(())
    /// ```
    pub fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        let engine = &self.workers.engine;
        let changed = engine
            .store
            .rate_known(channel, rate, self.workers.has(channel))?;
        engine.wake(channel, true);
        Ok(changed)
    }

    /// Sets how many of `channel`'s tasks with the same concurrency key
    /// ([`EnqueueOptions::concurrency_key`](crate::EnqueueOptions::concurrency_key)) may start
    /// per window of time across every process and machine sharing the store (`None`: no
    /// limit), durably, changeable while workers run: "no more than 10 calls a minute per
    /// customer". Each key is counted apart, in windows as [`SimplePyQ::set_rate`] counts a
    /// channel's; a key whose window is used up holds up no task of another key or without
    /// one, and its tasks wait, without polling, until the window ends. Tasks without a key
    /// are not counted. A channel may have both rates, and a limit of running tasks per key
    /// ([`SimplePyQ::set_max_running_per_key`], 1 unless set): a task starts only when every
    /// one allows it. Returns whether it changed.
    ///
    /// Errors as [`SimplePyQ::set_rate`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use simplepyq::Rate;
    /// # let q = simplepyq::SimplePyQ::memory();
    /// q.add_channel("api", |_: u64| Ok(()), 8)?;
    /// q.set_max_running_per_key("api", 4)?;
    /// q.set_rate_per_key("api", Some(Rate::new(10, Duration::from_secs(60))))?;
    /// # Ok::<(), simplepyq::Error>(())
    /// ```
    pub fn set_rate_per_key(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        let engine = &self.workers.engine;
        let changed = engine
            .store
            .rate_per_key_known(channel, rate, self.workers.has(channel))?;
        engine.wake(channel, true);
        Ok(changed)
    }

    /// Whether `channel` is paused.
    pub fn is_paused(&self, channel: &str) -> Result<bool> {
        Ok(self.flows()?.get(channel).is_some_and(|f| f.paused))
    }

    /// Every channel whose flow settings are not the defaults (paused, or limited), in name
    /// order.
    pub fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        self.workers.engine.store.flows()
    }
}
