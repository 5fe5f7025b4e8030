//! The conformance suite against the in-memory backend.

shoal_store::conformance_tests!(async { shoal_store::MemStore::default() });
