//! ringlog-net.
