//! Leader balancing (issue 18): after failovers and rolling restarts, leadership spreads back
//! across the nodes by itself, as Redpanda's leader balancer does.
//!
//! Every partition has a *preferred leader*: `balance.preferred_leaders[p % len]` when that
//! list is set and names a voter, else the voter at index `p % voters` of the partition's
//! voters in id order (so with every node a voter, partitions spread evenly and the same way
//! on every node). A node that leads a partition whose preferred leader is another voter
//! hands the leadership over through the normal Raft leadership transfer (thesis §3.10:
//! `TimeoutNow` once the target's log matches; no safety shortcut) when all of these hold:
//! - the leader has committed an entry of its own term (it is settled as leader);
//! - no membership change is in progress (no uncommitted membership entry, no learner);
//! - no transfer is in progress;
//! - the target is undamaged, streamed to (`Replicate`), within [`BALANCE_LAG_MAX`] entries
//!   of the leader's last index, and answered within [`ACTIVE_WITHIN_ELECTIONS`] election
//!   timeouts — continuously so for `balance.settle_ms`;
//! - this node has led the partition for `balance.settle_ms`;
//! - the node-wide [`TransferLimit`] grants one of its `balance.transfers_per_minute`.
//!
//! [`decide`] is the pure decision (inputs → transfer or not, with the reason);
//! [`BalanceWatch`] turns successive observations into the durations it needs;
//! [`TransferLimit`] is the per-minute bound. `core.rs` runs a pass over the shard's
//! partitions every [`BALANCE_INTERVAL`] while `balance.enabled`.
//!
//! Invariants: the balancer only ever calls `transfer_leadership` on a leader, toward a
//! voter, never while a membership change or a transfer is in progress; at most
//! `transfers_per_minute` balancing transfers start on a node in any 60 s window.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringlog_net::PartitionId;
use ringlog_raft::{NodeId, Term};

/// How often a shard looks at its partitions' leadership.
pub(crate) const BALANCE_INTERVAL: Duration = Duration::from_millis(500);
/// The preferred leader may be at most this many entries behind the leader's last index to be
/// a transfer target (the core sends `TimeoutNow` once it matches; a target farther behind
/// could not catch up within the transfer's election timeout under load).
pub(crate) const BALANCE_LAG_MAX: u64 = 64;
/// A target counts as reachable while it answered within this many election timeouts
/// (the core resets its `recent_active` flag every election timeout).
pub(crate) const ACTIVE_WITHIN_ELECTIONS: u32 = 2;
/// The window `balance.transfers_per_minute` counts in.
pub(crate) const TRANSFER_WINDOW: Duration = Duration::from_secs(60);

/// `[balance]` as the balancer uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BalanceSettings {
    pub enabled: bool,
    pub settle: Duration,
    /// Overrides of the derived preferred leader (`balance.preferred_leaders`); empty: none.
    pub preferred_leaders: Vec<NodeId>,
}

/// The preferred leader of `partition` among `voters` (any order): the override
/// `preferred[p % len]` if it is a voter, else the voter at `p % voters` in id order.
/// `None` only without voters.
pub(crate) fn preferred_leader(
    partition: PartitionId,
    voters: &[NodeId],
    preferred: &[NodeId],
) -> Option<NodeId> {
    if !preferred.is_empty() {
        let named = preferred[partition.0 as usize % preferred.len()];
        if voters.contains(&named) {
            return Some(named);
        }
    }
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[partition.0 as usize % sorted.len()])
}

/// The preferred leader's replication, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TargetView {
    pub node: NodeId,
    /// It reported itself damaged (it counts toward no quorum until repaired).
    pub damaged: bool,
    /// Entries between its match index and the leader's last index.
    pub lag: u64,
    /// How long it has been continuously healthy (reachable, streamed to, not damaged,
    /// within [`BALANCE_LAG_MAX`]); `None`: not healthy now.
    pub healthy_for: Option<Duration>,
}

/// What one partition's replica knows, for one balancing decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaderView {
    pub me: NodeId,
    pub leading: bool,
    /// The partition's preferred leader ([`preferred_leader`]).
    pub preferred: Option<NodeId>,
    /// The leader committed an entry of its own term.
    pub ready: bool,
    /// No uncommitted membership entry and no learner.
    pub membership_settled: bool,
    pub transfer_in_progress: bool,
    /// How long this replica has led (in the current term).
    pub led_for: Duration,
    /// The preferred leader's progress; `None` when it is not a voter the leader tracks.
    pub target: Option<TargetView>,
}

/// Why the balancer leaves a partition's leadership where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stay {
    Disabled,
    /// The partition failed, closes, or restarts damaged.
    Unusable,
    NotLeader,
    NoPreferredLeader,
    AlreadyPreferred,
    MembershipChanging,
    TransferInProgress,
    LeaderNotReady,
    PreferredNotVoter,
    PreferredDamaged,
    PreferredLagging,
    PreferredUnhealthy,
    Settling,
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Hand the leadership to the preferred leader (subject to the [`TransferLimit`]).
    Transfer(NodeId),
    Stay(Stay),
}

/// Whether this replica should hand its leadership to the preferred leader now (module docs).
pub(crate) fn decide(settings: &BalanceSettings, view: &LeaderView) -> Decision {
    use Decision::Stay as S;
    if !settings.enabled {
        return S(Stay::Disabled);
    }
    if !view.leading {
        return S(Stay::NotLeader);
    }
    let Some(preferred) = view.preferred else { return S(Stay::NoPreferredLeader) };
    if preferred == view.me {
        return S(Stay::AlreadyPreferred);
    }
    if !view.membership_settled {
        return S(Stay::MembershipChanging);
    }
    if view.transfer_in_progress {
        return S(Stay::TransferInProgress);
    }
    if !view.ready {
        return S(Stay::LeaderNotReady);
    }
    let Some(target) = view.target.filter(|t| t.node == preferred) else {
        return S(Stay::PreferredNotVoter);
    };
    if target.damaged {
        return S(Stay::PreferredDamaged);
    }
    if target.lag > BALANCE_LAG_MAX {
        return S(Stay::PreferredLagging);
    }
    let Some(healthy_for) = target.healthy_for else { return S(Stay::PreferredUnhealthy) };
    if view.led_for < settings.settle || healthy_for < settings.settle {
        return S(Stay::Settling);
    }
    Decision::Transfer(preferred)
}

/// One observation of the preferred leader's progress (leader only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TargetSeen {
    pub node: NodeId,
    pub damaged: bool,
    pub lag: u64,
    /// The core streams entries to it (`ProgressState::Replicate`).
    pub streaming: bool,
    /// It answered within the current election timeout (`recent_active`).
    pub active: bool,
}

/// A partition's balancing memory between passes: since when this replica leads, since when
/// the preferred leader has been healthy and when it last answered.
#[derive(Clone, Debug, Default)]
pub(crate) struct BalanceWatch {
    led: Option<(Term, Instant)>,
    target: Option<TargetWatch>,
}

#[derive(Clone, Copy, Debug)]
struct TargetWatch {
    node: NodeId,
    term: Term,
    active_at: Option<Instant>,
    healthy_since: Option<Instant>,
}

impl BalanceWatch {
    /// Records one observation at `now` and returns (how long this replica has led, the
    /// target's view). `leading_term`: the term this replica leads in (`None`: not leading,
    /// which forgets everything). `active_within`: how recent an answer keeps the target
    /// reachable.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        leading_term: Option<Term>,
        seen: Option<TargetSeen>,
        active_within: Duration,
    ) -> (Duration, Option<TargetView>) {
        let Some(term) = leading_term else {
            *self = BalanceWatch::default();
            return (Duration::ZERO, None);
        };
        let led_since = match self.led {
            Some((t, since)) if t == term => since,
            _ => now,
        };
        self.led = Some((term, led_since));
        let Some(seen) = seen else {
            self.target = None;
            return (now.saturating_duration_since(led_since), None);
        };
        let mut watch = match self.target {
            Some(w) if w.node == seen.node && w.term == term => w,
            _ => TargetWatch { node: seen.node, term, active_at: None, healthy_since: None },
        };
        if seen.active {
            watch.active_at = Some(now);
        }
        let reachable =
            watch.active_at.is_some_and(|at| now.saturating_duration_since(at) <= active_within);
        let healthy = reachable && seen.streaming && !seen.damaged && seen.lag <= BALANCE_LAG_MAX;
        watch.healthy_since = match (healthy, watch.healthy_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
        };
        self.target = Some(watch);
        let view = TargetView {
            node: seen.node,
            damaged: seen.damaged,
            lag: seen.lag,
            healthy_for: watch.healthy_since.map(|since| now.saturating_duration_since(since)),
        };
        (now.saturating_duration_since(led_since), Some(view))
    }
}

/// The node-wide bound on balancing transfers: at most `per_minute` start in any
/// [`TRANSFER_WINDOW`] (a sliding window; its queue holds at most `per_minute` instants).
/// Shared by the node's shards (a mutex taken once per granted decision, off the data path).
#[derive(Debug)]
pub(crate) struct TransferLimit {
    per_minute: usize,
    started: Mutex<VecDeque<Instant>>,
}

impl TransferLimit {
    pub(crate) fn new(per_minute: u32) -> TransferLimit {
        let per_minute = per_minute as usize;
        TransferLimit { per_minute, started: Mutex::new(VecDeque::with_capacity(per_minute)) }
    }

    /// Takes one transfer at `now` if fewer than `per_minute` started in the window before it.
    pub(crate) fn try_take(&self, now: Instant) -> bool {
        let mut started = self.started.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while started
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= TRANSFER_WINDOW)
        {
            started.pop_front();
        }
        if started.len() >= self.per_minute {
            return false;
        }
        started.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(10);

    fn settings() -> BalanceSettings {
        BalanceSettings { enabled: true, settle: SETTLE, preferred_leaders: Vec::new() }
    }

    /// Node 1 leads, node 2 is preferred, healthy, caught up, everything settled.
    fn view() -> LeaderView {
        LeaderView {
            me: NodeId(1),
            leading: true,
            preferred: Some(NodeId(2)),
            ready: true,
            membership_settled: true,
            transfer_in_progress: false,
            led_for: SETTLE,
            target: Some(TargetView {
                node: NodeId(2),
                damaged: false,
                lag: 0,
                healthy_for: Some(SETTLE),
            }),
        }
    }

    fn with_target(adjust: impl FnOnce(&mut TargetView)) -> LeaderView {
        let mut v = view();
        adjust(v.target.as_mut().unwrap());
        v
    }

    #[test]
    fn a_settled_leader_hands_over_to_a_healthy_caught_up_preferred_leader() {
        assert_eq!(decide(&settings(), &view()), Decision::Transfer(NodeId(2)));
        let lagging_a_little = with_target(|t| t.lag = BALANCE_LAG_MAX);
        assert_eq!(decide(&settings(), &lagging_a_little), Decision::Transfer(NodeId(2)));
    }

    #[test]
    fn the_off_switch_stops_every_transfer() {
        let off = BalanceSettings { enabled: false, ..settings() };
        assert_eq!(decide(&off, &view()), Decision::Stay(Stay::Disabled));
    }

    #[test]
    fn no_transfer_toward_a_damaged_lagging_or_unhealthy_preferred_leader() {
        let s = settings();
        let damaged = with_target(|t| t.damaged = true);
        assert_eq!(decide(&s, &damaged), Decision::Stay(Stay::PreferredDamaged));
        let lagging = with_target(|t| t.lag = BALANCE_LAG_MAX + 1);
        assert_eq!(decide(&s, &lagging), Decision::Stay(Stay::PreferredLagging));
        let unhealthy = with_target(|t| t.healthy_for = None);
        assert_eq!(decide(&s, &unhealthy), Decision::Stay(Stay::PreferredUnhealthy));
        let gone = LeaderView { target: None, ..view() };
        assert_eq!(decide(&s, &gone), Decision::Stay(Stay::PreferredNotVoter));
    }

    #[test]
    fn no_transfer_during_a_membership_change_a_transfer_or_before_the_leader_is_ready() {
        let s = settings();
        let changing = LeaderView { membership_settled: false, ..view() };
        assert_eq!(decide(&s, &changing), Decision::Stay(Stay::MembershipChanging));
        let transferring = LeaderView { transfer_in_progress: true, ..view() };
        assert_eq!(decide(&s, &transferring), Decision::Stay(Stay::TransferInProgress));
        let unready = LeaderView { ready: false, ..view() };
        assert_eq!(decide(&s, &unready), Decision::Stay(Stay::LeaderNotReady));
    }

    #[test]
    fn nothing_moves_before_the_settle_delay_after_the_election_or_the_return() {
        let s = settings();
        let new_leader = LeaderView { led_for: SETTLE - Duration::from_millis(1), ..view() };
        assert_eq!(decide(&s, &new_leader), Decision::Stay(Stay::Settling));
        let just_back = with_target(|t| t.healthy_for = Some(SETTLE / 2));
        assert_eq!(decide(&s, &just_back), Decision::Stay(Stay::Settling));
    }

    #[test]
    fn followers_and_preferred_leaders_stay() {
        let s = settings();
        let follower = LeaderView { leading: false, ..view() };
        assert_eq!(decide(&s, &follower), Decision::Stay(Stay::NotLeader));
        let preferred = LeaderView { preferred: Some(NodeId(1)), ..view() };
        assert_eq!(decide(&s, &preferred), Decision::Stay(Stay::AlreadyPreferred));
    }

    #[test]
    fn preferred_leaders_spread_partitions_evenly_over_the_voters_in_id_order() {
        let voters = [NodeId(3), NodeId(1), NodeId(2)];
        let picks: Vec<u32> =
            (0..6).map(|p| preferred_leader(PartitionId(p), &voters, &[]).unwrap().0).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert_eq!(preferred_leader(PartitionId(0), &[], &[]), None);
    }

    #[test]
    fn a_configured_preferred_leader_wins_while_it_is_a_voter() {
        let voters = [NodeId(1), NodeId(2), NodeId(3)];
        let preferred = [NodeId(3), NodeId(9)];
        assert_eq!(preferred_leader(PartitionId(0), &voters, &preferred), Some(NodeId(3)));
        assert_eq!(preferred_leader(PartitionId(2), &voters, &preferred), Some(NodeId(3)));
        // Node 9 is no voter: the derived choice (partition 1 → node 2).
        assert_eq!(preferred_leader(PartitionId(1), &voters, &preferred), Some(NodeId(2)));
    }

    #[test]
    fn the_limit_grants_at_most_per_minute_transfers_in_any_minute() {
        let limit = TransferLimit::new(3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(limit.try_take(at(0)));
        assert!(limit.try_take(at(1_000)));
        assert!(limit.try_take(at(2_000)));
        assert!(!limit.try_take(at(3_000)));
        assert!(!limit.try_take(at(59_999)));
        // The first grant left the window; the second has not.
        assert!(limit.try_take(at(60_000)));
        assert!(!limit.try_take(at(60_500)));
        assert!(limit.try_take(at(61_000)));
    }

    fn seen(active: bool, lag: u64) -> TargetSeen {
        TargetSeen { node: NodeId(2), damaged: false, lag, streaming: true, active }
    }

    #[test]
    fn the_watch_measures_leadership_and_continuous_health_and_forgets_on_step_down() {
        let within = Duration::from_secs(1);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = BalanceWatch::default();
        let (led, view) = w.observe(at(0), Some(Term(5)), Some(seen(true, 0)), within);
        assert_eq!((led, view.unwrap().healthy_for), (Duration::ZERO, Some(Duration::ZERO)));
        // A missed `recent_active` within the window keeps the target healthy.
        let (led, view) = w.observe(at(500), Some(Term(5)), Some(seen(false, 0)), within);
        assert_eq!(led, Duration::from_millis(500));
        assert_eq!(view.unwrap().healthy_for, Some(Duration::from_millis(500)));
        // Silent for longer than the window: unhealthy, and the streak restarts.
        let (_, view) = w.observe(at(1_600), Some(Term(5)), Some(seen(false, 0)), within);
        assert_eq!(view.unwrap().healthy_for, None);
        let (_, view) = w.observe(at(2_000), Some(Term(5)), Some(seen(true, 0)), within);
        assert_eq!(view.unwrap().healthy_for, Some(Duration::ZERO));
        // Lagging beyond the bound breaks the streak too.
        let (_, view) =
            w.observe(at(2_500), Some(Term(5)), Some(seen(true, BALANCE_LAG_MAX + 1)), within);
        assert_eq!(view.unwrap().healthy_for, None);
        // A new term is a new leadership.
        let (led, _) = w.observe(at(3_000), Some(Term(6)), Some(seen(true, 0)), within);
        assert_eq!(led, Duration::ZERO);
        let (led, view) = w.observe(at(3_500), None, Some(seen(true, 0)), within);
        assert_eq!((led, view), (Duration::ZERO, None));
        let (led, _) = w.observe(at(4_000), Some(Term(6)), Some(seen(true, 0)), within);
        assert_eq!(led, Duration::ZERO);
    }
}
