//! Conformance functions (filled in below).
