//! Fuzz target `sqlite_file`: see `simplepyq_tests::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    simplepyq_tests::fuzz::run("sqlite_file", data);
});
