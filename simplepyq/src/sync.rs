//! The locks of the runtime's meeting points, in one place, so that the concurrency tests
//! can swap them: in the unit tests built with `--cfg shuttle` they are shuttle's, whose
//! scheduler explores the interleavings of the threads that use them (see
//! `shuttle_tests`); everywhere else they are parking_lot's.

#[cfg(not(all(test, shuttle)))]
pub(crate) use parking_lot::{Condvar, Mutex};

#[cfg(all(test, shuttle))]
pub(crate) use self::shuttled::{Condvar, Mutex};

/// Pauses the calling thread (between tries of a failing store call); under shuttle, lets
/// the other threads run instead.
pub(crate) fn pause(duration: std::time::Duration) {
    #[cfg(not(all(test, shuttle)))]
    std::thread::sleep(duration);
    #[cfg(all(test, shuttle))]
    {
        let _ = duration;
        shuttle::thread::yield_now();
    }
}

/// How long a stopping queue keeps trying a store call that fails (recording an outcome,
/// giving a task back) before it gives up; none under shuttle, whose schedules must end.
pub(crate) const GIVE_UP: std::time::Duration = if cfg!(all(test, shuttle)) {
    std::time::Duration::ZERO
} else {
    std::time::Duration::from_secs(2)
};

/// parking_lot's API over shuttle's locks (a test build only).
#[cfg(all(test, shuttle))]
mod shuttled {
    use std::ops::{Deref, DerefMut};
    use std::time::Duration;

    /// A mutex whose `lock` returns the guard, as parking_lot's.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    /// Its guard; a wait takes the inner guard out and puts it back.
    #[derive(Debug)]
    pub(crate) struct MutexGuard<'a, T>(Option<shuttle::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(shuttle::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(|p| p.into_inner())))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("a guard is held outside waits")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("a guard is held outside waits")
        }
    }

    /// A condition variable that waits on a `&mut` guard, as parking_lot's. Shuttle's timed
    /// waits never time out: a wait ends with a notification only.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(shuttle::sync::Condvar);

    impl Condvar {
        pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, timeout: Duration) {
            let inner = guard.0.take().expect("a guard is held outside waits");
            let (inner, _) = self
                .0
                .wait_timeout(inner, timeout)
                .unwrap_or_else(|p| p.into_inner());
            guard.0 = Some(inner);
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("a guard is held outside waits");
            guard.0 = Some(self.0.wait(inner).unwrap_or_else(|p| p.into_inner()));
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}
