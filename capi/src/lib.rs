//! ringlog-capi.
