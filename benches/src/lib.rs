//! Benchmarks live in the bench targets; this crate has no library code.
