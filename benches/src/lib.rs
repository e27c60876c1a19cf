//! Shared parts of the simplepyq benchmarks: the backends under test and the bare SQLite
//! limits they are compared with.

pub mod backends;
pub mod bare;
