//! Fuzz target `redb_file`: see `simplepyq_tests::fuzz`.
//!
//! redb panics on some damaged files; the store catches those panics and returns
//! `Error::Corrupt`. libFuzzer's panic hook would abort on them before the store could, so
//! this target keeps panics quiet and lets them unwind: only a panic that escapes the store
//! reaches the harness, which aborts and reports it.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: std::panic::set_hook(Box::new(|_| {})),
    |data: &[u8]| {
        simplepyq_tests::fuzz::run("redb_file", data);
    }
);
