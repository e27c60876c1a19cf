//! The integration tests: every backend through the conformance suite and the scenarios,
//! and the durability tests with real processes.

mod damage;
mod dependencies;
mod flow;
mod fuzz_corpus;
mod handlers;
mod netns;
mod outbox;
mod outbox_pg;
mod permissions;
mod pg;
mod processes;
mod schedules;
mod timeouts;

mod memory {
    use simplepyq::MemoryStore;
    use simplepyq_tests::{Fixture, backend_tests};

    fn fixture() -> Fixture {
        Fixture::new(MemoryStore::new())
    }

    backend_tests!(super::fixture);

    mod model {
        simplepyq_tests::model_tests!(super::fixture, 256);
    }

    mod lifecycle_model {
        simplepyq_tests::lifecycle_model_tests!(super::fixture, 32);
    }
}

mod sqlite {
    use simplepyq::SqliteStore;
    use simplepyq_tests::{Fixture, backend_tests};

    fn fixture() -> Fixture {
        Fixture::in_temp_dir("tasks.db", |p| SqliteStore::open(p))
    }

    backend_tests!(super::fixture);

    mod model {
        simplepyq_tests::model_tests!(super::fixture, 48);
    }

    mod lifecycle_model {
        simplepyq_tests::lifecycle_model_tests!(super::fixture, 16);
    }
}

mod redb {
    use simplepyq::RedbStore;
    use simplepyq_tests::{Fixture, backend_tests};

    fn fixture() -> Fixture {
        Fixture::in_temp_dir("tasks.redb", |p| RedbStore::open(p))
    }

    backend_tests!(super::fixture);

    mod model {
        simplepyq_tests::model_tests!(super::fixture, 32);
    }

    mod lifecycle_model {
        simplepyq_tests::lifecycle_model_tests!(super::fixture, 16);
    }
}

mod postgres {
    use simplepyq_tests::backend_tests;

    backend_tests!(simplepyq_tests::postgres::fixture);

    mod model {
        simplepyq_tests::model_tests!(simplepyq_tests::postgres::fixture, 16);
    }

    mod lifecycle_model {
        simplepyq_tests::lifecycle_model_tests!(simplepyq_tests::postgres::fixture, 8);
    }
}
