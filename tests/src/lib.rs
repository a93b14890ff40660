//! ringlog-tests.
