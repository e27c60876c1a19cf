//! The integration tests: every backend through the conformance suite and the scenarios.

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
