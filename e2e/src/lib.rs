//! End-to-end harness shared by the e2e binaries and tests.
