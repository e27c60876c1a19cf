//! Tests shared by every simplepyq backend.
//!
//! [`conformance`] holds one function per behaviour of the [`Store`] contract, each taking a
//! fresh store; [`conformance_tests!`] expands them into one `#[test]` per behaviour for a
//! backend, so a failure names the backend and the case. [`scenarios`] does the same for the
//! original library's usage examples, run through the `SimplePyQ` facade.

use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use simplepyq::{ChannelOptions, SimplePyQ, TaskError};
use simplepyq_core::Store;

pub mod conformance;
pub mod faults;
pub mod fuzz;
pub mod lifecycle;
pub mod lifecycle_model;
pub mod model;
pub mod postgres;
pub mod scenarios;
pub mod system;

/// How a suite's channels run their handlers: each scenario and lifecycle case runs both
/// ways, on every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handlers {
    /// On worker threads (`add_channel`).
    Threads,
    /// As futures on a tokio runtime (`add_channel_async`), the same handler run inside
    /// an `async` block.
    Async,
}

impl Handlers {
    /// Adds channel `name` to `q` with `max_workers` workers (or futures in flight).
    pub fn add<S, A, F>(
        self,
        q: &SimplePyQ<S>,
        name: &str,
        handler: F,
        max_workers: usize,
    ) -> simplepyq::Result<()>
    where
        S: Store,
        A: DeserializeOwned + Send + 'static,
        F: Fn(A) -> Result<(), TaskError> + Send + Sync + 'static,
    {
        self.add_with(q, name, handler, ChannelOptions::new(max_workers))
    }

    /// Adds channel `name` to `q` with `options`.
    pub fn add_with<S, A, F>(
        self,
        q: &SimplePyQ<S>,
        name: &str,
        handler: F,
        options: ChannelOptions,
    ) -> simplepyq::Result<()>
    where
        S: Store,
        A: DeserializeOwned + Send + 'static,
        F: Fn(A) -> Result<(), TaskError> + Send + Sync + 'static,
    {
        match self {
            Handlers::Threads => q.add_channel_with(name, handler, options).map(drop),
            Handlers::Async => {
                let handler = Arc::new(handler);
                let options = options.runtime(runtime().handle().clone());
                q.add_channel_async_with(
                    name,
                    move |args: A| {
                        let handler = Arc::clone(&handler);
                        async move { handler(args) }
                    },
                    options,
                )
                .map(drop)
            }
        }
    }
}

/// The runtime of the suites' async channels: threads enough that handlers which block (the
/// suites' handlers sleep and wait on each other) do not stall the others.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(16)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Opens the store of a durable fixture again.
type Reopen = Box<dyn Fn() -> Box<dyn Store>>;

/// A store under test, with whatever must live as long as it (a temporary directory), and
/// for durable stores a way to open the same file again.
pub struct Fixture {
    /// The store.
    pub store: Box<dyn Store>,
    /// Dropped with the fixture, after the store: a temporary directory, a test schema.
    pub guard: Option<Box<dyn std::any::Any>>,
    reopen: Option<Reopen>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("durable", &self.reopen.is_some())
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture with nothing to clean up, that cannot be reopened.
    pub fn new(store: impl Store) -> Self {
        Fixture {
            store: Box::new(store),
            guard: None,
            reopen: None,
        }
    }

    /// A store on the file `name` in a fresh temporary directory, which lives as long as
    /// the fixture; [`Fixture::reopen`] opens the file again with `open`.
    pub fn in_temp_dir<S: Store>(
        name: &str,
        open: impl Fn(&std::path::Path) -> simplepyq_core::Result<S> + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        let store = open(&path).expect("open the store");
        let reopen: Reopen = Box::new(move || Box::new(open(&path).expect("reopen the store")));
        Fixture {
            store: Box::new(store),
            guard: Some(Box::new(dir)),
            reopen: Some(reopen),
        }
    }

    /// A durable store, `guard` (dropped after it), and a way to open it again.
    pub fn with_reopen<S: Store>(
        store: S,
        guard: impl std::any::Any,
        reopen: impl Fn() -> S + 'static,
    ) -> Self {
        Fixture {
            store: Box::new(store),
            guard: Some(Box::new(guard)),
            reopen: Some(Box::new(move || Box::new(reopen()))),
        }
    }

    /// Closes the store and opens its file again, as a restarted process would; returns
    /// whether the store is durable (a store in memory is left as it is).
    pub fn reopen(&mut self) -> bool {
        let Some(reopen) = &self.reopen else {
            return false;
        };
        // Close first: redb allows one open per file.
        drop(std::mem::replace(
            &mut self.store,
            Box::new(simplepyq::MemoryStore::new()),
        ));
        self.store = reopen();
        true
    }
}

/// Expands into the modules `conformance` and `scenarios`, each with one `#[test]` per
/// behaviour, on fresh stores from `$factory: fn() -> Fixture`.
#[macro_export]
macro_rules! backend_tests {
    ($factory:path) => {
        mod conformance {
            $crate::conformance_tests!($factory);
        }

        mod scenarios {
            $crate::scenario_tests!($factory);
        }

        mod lifecycle {
            $crate::lifecycle_tests!($factory);
        }
    };
}

/// Expands into one `#[test]` per conformance behaviour, each on a fresh store from
/// `$factory: fn() -> Fixture`.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        fn fixture() -> $crate::Fixture {
            $factory()
        }
        $crate::conformance_tests!(@groups
            claim: [
                enqueue_assigns_unique_ids_in_order,
                a_large_batch_keeps_its_order_and_fields,
                concurrent_enqueues_each_get_their_own_ids,
                enqueue_is_all_or_nothing_on_bad_channel,
                enqueue_in_the_future_is_delayed,
                args_round_trip_exactly,
                timeouts_round_trip_in_milliseconds,
                traceparents_round_trip,
                claim_follows_run_at_then_id,
                claim_respects_limit_and_channel,
                claim_skips_tasks_not_due,
                claims_promote_due_delayed_tasks_in_batches,
                claimed_task_is_not_claimed_again,
                next_wakeup_is_earliest_run_at_or_lease,
                ids_are_never_reused,
                concurrent_claims_never_share_a_task,
                priority_orders_claims,
                due_delayed_tasks_are_promoted_and_keep_their_priority,
                unique_keys_deduplicate_unfinished_tasks,
            ];
            outcome: [
                success_marks_done,
                retries_allow_n_plus_one_attempts,
                permanent_failure_skips_retries,
                delay_consumes_no_retry,
                retry_at_in_the_future_delays,
                stale_claim_is_lease_lost,
                extend_leases_keeps_held_claims_only,
                recover_expired_counts_lost_runs,
                release_gives_unstarted_tasks_back,
                results_are_kept_with_done_tasks,
                stuck_marks_count_while_their_attempt_runs,
            ];
            admin: [
                clear_failed_per_channel_or_all,
                bulk_calls_reach_every_task_across_batches,
                requeue_failed_restores_or_sets_retries,
                remove_channel_deletes_every_status,
                purge_done_deletes_old_done_tasks,
                purge_failed_deletes_old_failed_tasks,
                requeue_keeps_unique_keys_unique,
                cancel_deletes_queued_tasks_only,
            ];
            inspect: [
                channels_lists_channels_with_tasks,
                counts_per_channel_and_total,
                has_tasks_per_channel_and_status,
                get_returns_none_for_unknown_id,
                list_pages_in_id_order,
                finished_counts_per_bucket,
                totals_count_each_run_once,
            ];
            schedules: [
                schedule_firings_move_forward,
                concurrent_firings_enqueue_each_fire_time_once,
            ];
            flow: [
                a_paused_channel_is_not_claimed,
                running_tasks_of_a_paused_channel_go_on,
                a_pause_is_a_setting_of_its_own,
                a_limit_caps_the_running_tasks,
                concurrent_claims_never_exceed_the_limit,
                an_outcome_frees_the_slot_its_call_claims,
            ];
            keys: [
                a_busy_key_holds_up_no_other_task,
                a_per_key_limit_lets_n_run,
                keys_belong_to_their_channel,
                bad_keys_are_refused,
                concurrent_claims_never_run_a_key_twice,
            ];
            dependencies: [
                a_task_waits_for_every_parent,
                done_parents_hold_up_nothing,
                a_group_and_its_final_task_go_in_one_call,
                lost_parents_are_refused,
                a_failed_parent_fails_its_dependents,
                a_removed_parent_fails_its_dependents,
                requeue_waits_for_the_parents,
                a_waiting_task_holds_its_unique_key,
                parents_ending_together_unblock_once,
                a_fan_in_is_unblocked_by_its_last_parent,
                children_enqueued_while_the_parent_ends_are_settled,
            ];
            rates: [
                a_rate_caps_the_starts_of_each_window,
                bad_rates_are_refused_and_a_rate_outlives_its_tasks,
                concurrent_claims_never_exceed_a_rate,
                a_rate_per_key_caps_each_keys_starts,
                a_rate_per_key_waits_for_busy_keys_and_outlives_its_tasks,
                concurrent_claims_never_exceed_a_rate_per_key,
            ];
        );
        #[test]
        fn a_rate_outlives_the_store() {
            let mut fixture = fixture();
            $crate::conformance::rates::a_rate_outlives_the_store(&mut fixture);
        }
        #[test]
        fn a_pause_outlives_the_store() {
            let mut fixture = fixture();
            $crate::conformance::flow::a_pause_outlives_the_store(&mut fixture);
        }
        #[test]
        fn forwarding_impls_behave_alike() {
            let $crate::Fixture { store, guard, .. } = fixture();
            $crate::conformance::forwarding_impls_behave_alike(store);
            drop(guard);
        }
    };
    (@groups $($group:ident: [$($name:ident),* $(,)?];)*) => {
        $(
            mod $group {
                $(
                    #[test]
                    fn $name() {
                        let fixture: $crate::Fixture = super::fixture();
                        $crate::conformance::$group::$name(&*fixture.store);
                    }
                )*
            }
        )*
    };
}
