//! ringlog-engine.
