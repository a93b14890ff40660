//! Network cuts between real `ringlog serve` processes (issue #13: SIGSTOP does not isolate a
//! node — its peers' bytes wait in the kernel and it reads them on resume).
//!
//! The test's thread moves into a network namespace of its own ([`PrivateNetwork::enter`]:
//! `unshare(CLONE_NEWNET)`, then `lo` up), so every node it spawns and every client it opens
//! talks over that namespace's loopback only, and the rules below touch nothing outside it.
//! Nodes run with one group id each (`Cluster::node_gid_base`), so iptables can tell their
//! connections apart although all of them come from 127.0.0.1:
//! - `mangle OUTPUT`: the SYN a node with gid `base + a` sends to node `b`'s peer port marks
//!   the connection `mark(a, b)` (conntrack, so every later packet of it in both directions
//!   carries the mark);
//! - a cut of `a`–`b` drops, in `filter OUTPUT`, every packet of connections marked
//!   `mark(a, b)` or `mark(b, a)`: silently, as a failed link does (no reset), in both
//!   directions; a heal deletes those two rules. Client connections (to client ports) are
//!   never marked: the test keeps talking to every node.
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), `ip` and `iptables`: `.ci/run` installs
//! iptables where it is missing; outside CI a test without them prints why and returns.

#![allow(dead_code)]

use std::process::Command;

use crate::harness::Cluster;

/// Group ids of the nodes of a network-cut test: `GID_BASE + id`.
pub const GID_BASE: u32 = 61_000;

/// The calling thread's own network namespace (and that of everything it spawns from now on).
#[derive(Debug)]
pub struct PrivateNetwork {
    iptables: String,
}

impl PrivateNetwork {
    /// Moves the calling thread into a new network namespace with loopback up. `None` (with
    /// the reason printed) where the machine cannot: not root, or no `ip`/`iptables`; in CI
    /// (`CI` set) that is a failure instead, since `.ci/run` installs what the test needs.
    pub fn enter(test: &str) -> Option<PrivateNetwork> {
        match Self::try_enter() {
            Ok(network) => Some(network),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("{test}: cannot cut links here: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot cut links here: {why}");
                None
            }
        }
    }

    #[allow(unsafe_code)]
    fn try_enter() -> Result<PrivateNetwork, String> {
        let iptables = ["iptables", "iptables-legacy", "iptables-nft"]
            .into_iter()
            .find(|name| {
                Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success())
            })
            .ok_or("no iptables command (apt-get install iptables)")?
            .to_string();
        // SAFETY: unshare(2) takes no pointers; CLONE_NEWNET changes only the calling thread's
        // network namespace (threads and processes it creates later inherit it).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {} (needs root)",
                std::io::Error::last_os_error()
            ));
        }
        run("ip", &["link", "set", "lo", "up"])?;
        Ok(PrivateNetwork { iptables })
    }

    /// Marks every node-to-node connection of `cluster` by its ends (call before the nodes
    /// start, with `cluster.node_gid_base == Some(GID_BASE)`).
    pub fn mark_peer_links(&self, cluster: &Cluster) -> Result<(), String> {
        assert_eq!(cluster.node_gid_base, Some(GID_BASE), "nodes must run with their own gids");
        for &a in cluster.nodes.keys() {
            for (&b, node_b) in &cluster.nodes {
                if a == b {
                    continue;
                }
                let gid = (GID_BASE + a).to_string();
                let port = node_b.peer.port().to_string();
                let mark = mark(a, b);
                self.iptables(&[
                    "-t",
                    "mangle",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "--syn",
                    "-m",
                    "owner",
                    "--gid-owner",
                    &gid,
                    "--dport",
                    &port,
                    "-j",
                    "CONNMARK",
                    "--set-mark",
                    &mark,
                ])?;
            }
        }
        Ok(())
    }

    /// Cuts the links between `a` and `b` (both directions, every connection, silently).
    pub fn cut(&self, a: u32, b: u32) -> Result<(), String> {
        for m in [mark(a, b), mark(b, a)] {
            self.iptables(&["-A", "OUTPUT", "-m", "connmark", "--mark", &m, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Heals a cut made by [`PrivateNetwork::cut`].
    pub fn heal(&self, a: u32, b: u32) -> Result<(), String> {
        for m in [mark(a, b), mark(b, a)] {
            self.iptables(&["-D", "OUTPUT", "-m", "connmark", "--mark", &m, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Packets dropped so far by the cut rules (proof that a cut was in force).
    pub fn dropped_packets(&self) -> Result<u64, String> {
        let out = output(&self.iptables, &["-L", "OUTPUT", "-n", "-v", "-x"])?;
        Ok(out
            .lines()
            .filter(|line| line.contains("DROP") && line.contains("connmark"))
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    fn iptables(&self, args: &[&str]) -> Result<(), String> {
        run(&self.iptables, args)
    }
}

fn mark(a: u32, b: u32) -> String {
    format!("0x{:x}", 0x7000_0000u32 + (a << 8) + b)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args).map(drop)
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
