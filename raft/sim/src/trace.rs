//! Readable trace of a simulated run (for replaying a failing seed).
//!
//! Lines are built only when a sink is installed, so tracing costs nothing in bulk runs.
//! Format: `s<step> n<node> <event>`; `n0` is the simulator itself (faults, phases).

use ringlog_raft::message::{AppendResult, Message};
use ringlog_raft::types::NodeId;
use ringlog_raft::Action;

/// Where trace lines go.
pub type TraceSink = Box<dyn FnMut(&str) + Send>;

/// The trace of one run: off, or a sink for its lines.
#[derive(Default)]
pub struct Trace {
    sink: Option<TraceSink>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace").field("on", &self.sink.is_some()).finish()
    }
}

impl Trace {
    /// No trace.
    pub fn off() -> Trace {
        Trace { sink: None }
    }

    /// Every line goes to `sink`.
    pub fn to(sink: TraceSink) -> Trace {
        Trace { sink: Some(sink) }
    }

    /// Emits a line built by `text` (called only if tracing is on).
    pub fn line(&mut self, step: u64, node: NodeId, text: impl FnOnce() -> String) {
        if let Some(sink) = self.sink.as_mut() {
            sink(&format!("s{step} {node} {}", text()));
        }
    }
}

/// A one-line summary of a message (entries shown as an index range).
pub fn describe_message(message: &Message) -> String {
    match message {
        Message::Append { term, prev_index, prev_term, commit, entries } => {
            let range = match (entries.first(), entries.last()) {
                (Some(a), Some(b)) => {
                    format!("{}..={} ({} entries)", a.index, b.index, entries.len())
                }
                _ => "none".to_string(),
            };
            format!("Append {term} prev {prev_index}/{prev_term} commit {commit} entries {range}")
        }
        Message::AppendResponse { term, result: AppendResult::Accepted { durable, damaged } } => {
            format!("AppendResponse {term} accepted durable {durable} damaged {damaged}")
        }
        other => format!("{other:?}"),
    }
}

/// A one-line summary of an action.
pub fn describe_action(action: &Action) -> String {
    match action {
        Action::AppendEntries { entries } => match (entries.first(), entries.last()) {
            (Some(a), Some(b)) => format!(
                "AppendEntries {}..={} terms {}..{} {:?}",
                a.index,
                b.index,
                a.term,
                b.term,
                entries.iter().map(|e| &e.payload).collect::<Vec<_>>()
            ),
            _ => "AppendEntries (empty)".to_string(),
        },
        Action::Send { to, message } => format!("-> {to} {}", describe_message(message)),
        other => format!("{other:?}"),
    }
}
