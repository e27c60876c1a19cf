//! The integration tests: every backend through the conformance suite and the scenarios,
//! and the durability tests with real processes.

mod processes;

mod memory {
    use simplepyq::MemoryStore;
    use simplepyq_tests::{Fixture, conformance_tests, scenario_tests};

    fn fixture() -> Fixture {
        Fixture::new(MemoryStore::new())
    }

    mod conformance {
        super::conformance_tests!(super::fixture);
    }

    mod scenarios {
        super::scenario_tests!(super::fixture);
    }
}

mod sqlite {
    use simplepyq::SqliteStore;
    use simplepyq_tests::{Fixture, conformance_tests, scenario_tests};

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path().join("tasks.db")).expect("open");
        Fixture {
            store: Box::new(store),
            guard: Some(dir),
        }
    }

    mod conformance {
        super::conformance_tests!(super::fixture);
    }

    mod scenarios {
        super::scenario_tests!(super::fixture);
    }
}

mod redb {
    use simplepyq::RedbStore;
    use simplepyq_tests::{Fixture, conformance_tests, scenario_tests};

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStore::open(dir.path().join("tasks.redb")).expect("open");
        Fixture {
            store: Box::new(store),
            guard: Some(dir),
        }
    }

    mod conformance {
        super::conformance_tests!(super::fixture);
    }

    mod scenarios {
        super::scenario_tests!(super::fixture);
    }
}
