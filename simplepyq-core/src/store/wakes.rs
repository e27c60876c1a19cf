//! The wake-ups of a store's own queues.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Wake, Watch};

/// The wake-ups of a store's own queues, for the tasks a store's own change makes due with
/// no enqueue to announce them: a waiting task whose last parent is done
/// ([`crate::dependency`]). A store keeps one, registers each
/// [`crate::ClaimStore::watch`] with it, and calls [`LocalWakes::wake`] after the commit.
#[derive(Default)]
pub struct LocalWakes {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    last: u64,
    watchers: Vec<(u64, Wake)>,
}

impl LocalWakes {
    /// Calls `wake` on each later [`LocalWakes::wake`], until the returned watch is dropped.
    pub fn watch(&self, wake: Wake) -> Watch {
        let mut r = lock(&self.registry);
        r.last += 1;
        let key = r.last;
        r.watchers.push((key, wake));
        let registry = Arc::downgrade(&self.registry);
        Watch::new(move || {
            if let Some(registry) = registry.upgrade() {
                lock(&registry).watchers.retain(|(k, _)| *k != key);
            }
        })
    }

    /// Wakes every watching queue's workers of `channels`.
    pub fn wake<'a>(&self, channels: impl IntoIterator<Item = &'a str>) {
        let watchers: Vec<Wake> = lock(&self.registry)
            .watchers
            .iter()
            .map(|(_, w)| Arc::clone(w))
            .collect();
        if watchers.is_empty() {
            return;
        }
        for channel in channels {
            for wake in &watchers {
                wake(Some(channel));
            }
        }
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for LocalWakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWakes").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_dropped_watch_hears_no_more() {
        let wakes = LocalWakes::default();
        let heard = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&heard);
        let watch = wakes.watch(Arc::new(move |c: Option<&str>| {
            assert_eq!(c, Some("a"));
            h.fetch_add(1, Ordering::SeqCst);
        }));
        wakes.wake(["a"]);
        drop(watch);
        wakes.wake(["a"]);
        assert_eq!(heard.load(Ordering::SeqCst), 1);
    }
}
