//! ringlog-bench.
