//! Fuzz target `args`: see `simplepyq_tests::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    simplepyq_tests::fuzz::run("args", data);
});
