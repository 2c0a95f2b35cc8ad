//! End-to-end tests of whole agents.
