//! Host check of io_uring: a real probe ring, one NOP through it, and the opcodes glommio
//! requires.
//!
//! # Safety
//!
//! The only `unsafe` is pushing a NOP submission-queue entry onto the probe ring. A NOP names no
//! buffer and no file descriptor, so the kernel reads no memory through it and nothing has to
//! outlive the operation; the ring is owned by this function and waited on before it drops.

#![allow(unsafe_code)]

use io_uring::{opcode, IoUring, Probe};

use super::{names, Check, Status};

/// Submission-queue entries of the probe ring (the smallest useful ring).
const PROBE_RING_ENTRIES: u32 = 4;
/// Tags the NOP's completion.
const NOP_USER_DATA: u64 = 0x5249_4e47_4c4f_4721;

/// The opcodes glommio 0.9.0 checks at its first ring (`GLOMMIO_URING_OPS` in
/// `src/sys/uring.rs`; a missing one makes it `process::exit(1)`), plus ASYNC_CANCEL, which
/// it issues to cancel sources.
pub const GLOMMIO_URING_OPCODES: [(&str, u8); 24] = [
    ("NOP", opcode::Nop::CODE),
    ("READV", opcode::Readv::CODE),
    ("WRITEV", opcode::Writev::CODE),
    ("FSYNC", opcode::Fsync::CODE),
    ("READ_FIXED", opcode::ReadFixed::CODE),
    ("WRITE_FIXED", opcode::WriteFixed::CODE),
    ("POLL_ADD", opcode::PollAdd::CODE),
    ("POLL_REMOVE", opcode::PollRemove::CODE),
    ("SENDMSG", opcode::SendMsg::CODE),
    ("RECVMSG", opcode::RecvMsg::CODE),
    ("TIMEOUT", opcode::Timeout::CODE),
    ("TIMEOUT_REMOVE", opcode::TimeoutRemove::CODE),
    ("ACCEPT", opcode::Accept::CODE),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ("LINK_TIMEOUT", opcode::LinkTimeout::CODE),
    ("CONNECT", opcode::Connect::CODE),
    ("FALLOCATE", opcode::Fallocate::CODE),
    ("OPENAT", opcode::OpenAt::CODE),
    ("CLOSE", opcode::Close::CODE),
    ("STATX", opcode::Statx::CODE),
    ("READ", opcode::Read::CODE),
    ("WRITE", opcode::Write::CODE),
    ("SEND", opcode::Send::CODE),
    ("RECV", opcode::Recv::CODE),
];

/// What the probe ring showed.
#[derive(Debug)]
pub(super) enum UringProbe {
    /// io_uring_setup failed (disabled, seccomp, ENOSYS on old kernels).
    SetupFailed(std::io::Error),
    /// The ring exists but IORING_REGISTER_PROBE failed (kernel < 5.6).
    ProbeFailed(std::io::Error),
    /// The ring exists and answered the probe; `nop` is the NOP round trip's outcome.
    Ready { missing: Vec<&'static str>, nop: Result<(), String> },
}

/// Creates a ring, asks which opcodes the kernel supports and runs one NOP through it.
pub(super) fn probe() -> UringProbe {
    let mut ring = match IoUring::new(PROBE_RING_ENTRIES) {
        Ok(ring) => ring,
        Err(error) => return UringProbe::SetupFailed(error),
    };
    let mut probe = Probe::new();
    if let Err(error) = ring.submitter().register_probe(&mut probe) {
        return UringProbe::ProbeFailed(error);
    }
    let missing = GLOMMIO_URING_OPCODES
        .iter()
        .filter(|(_, code)| !probe.is_supported(*code))
        .map(|(name, _)| *name)
        .collect();
    UringProbe::Ready { missing, nop: nop_round_trip(&mut ring) }
}

fn nop_round_trip(ring: &mut IoUring) -> Result<(), String> {
    let nop = opcode::Nop::new().build().user_data(NOP_USER_DATA);
    // SAFETY: a NOP references no buffer or descriptor (module # Safety), so no memory must
    // stay valid while the kernel processes it.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "submission queue full".to_string())?;
    ring.submit_and_wait(1).map_err(|error| format!("io_uring_enter: {error}"))?;
    let completion = ring
        .completion()
        .next()
        .ok_or_else(|| "no completion after submit_and_wait(1)".to_string())?;
    if completion.user_data() != NOP_USER_DATA {
        return Err(format!("unexpected completion {:#x}", completion.user_data()));
    }
    if completion.result() < 0 {
        let error = std::io::Error::from_raw_os_error(-completion.result());
        return Err(format!("NOP completed with {error}"));
    }
    Ok(())
}

pub(super) fn ring_check(probe: &UringProbe) -> Check {
    let expected = "a ring is created and a NOP completes";
    match probe {
        UringProbe::SetupFailed(error) => {
            let fix = match error.raw_os_error() {
                Some(libc::EPERM) => {
                    "io_uring is refused to this process: set kernel.io_uring_disabled=0 (or \
                     add the user to kernel.io_uring_group), and allow io_uring_setup in the \
                     container's seccomp profile"
                }
                Some(libc::ENOSYS) => "the kernel lacks io_uring: upgrade to >= 6.1",
                Some(libc::ENOMEM) => "raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)",
                _ => "check kernel.io_uring_disabled, seccomp and RLIMIT_MEMLOCK",
            };
            Check::new(
                names::IO_URING_RING,
                Status::Fail,
                format!("io_uring_setup failed: {error}"),
            )
            .expected(expected)
            .fix(fix)
        }
        UringProbe::ProbeFailed(_) | UringProbe::Ready { nop: Ok(()), .. } => {
            let found = match probe {
                UringProbe::Ready { .. } => "ring created, NOP completed",
                _ => "ring created",
            };
            Check::new(names::IO_URING_RING, Status::Ok, found).expected(expected)
        }
        UringProbe::Ready { nop: Err(error), .. } => Check::new(
            names::IO_URING_RING,
            Status::Fail,
            format!("ring created but the NOP failed: {error}"),
        )
        .expected(expected)
        .fix("check the container's seccomp profile for io_uring_enter"),
    }
}

pub(super) fn opcodes_check(probe: &UringProbe) -> Check {
    let total = GLOMMIO_URING_OPCODES.len();
    let expected = format!("all {total} opcodes glommio uses");
    match probe {
        UringProbe::SetupFailed(_) => Check::new(
            names::IO_URING_OPCODES,
            Status::Fail,
            "not probed: no ring (see io_uring_ring)",
        )
        .expected(expected)
        .fix("fix io_uring_ring first"),
        UringProbe::ProbeFailed(error) => Check::new(
            names::IO_URING_OPCODES,
            Status::Fail,
            format!("IORING_REGISTER_PROBE failed: {error} (glommio panics on this)"),
        )
        .expected(expected)
        .fix("upgrade the kernel to >= 6.1"),
        UringProbe::Ready { missing, .. } if missing.is_empty() => {
            Check::new(names::IO_URING_OPCODES, Status::Ok, format!("{total}/{total} supported"))
                .expected(expected)
        }
        UringProbe::Ready { missing, .. } => Check::new(
            names::IO_URING_OPCODES,
            Status::Fail,
            format!("missing {} (glommio exits the process on this)", missing.join(", ")),
        )
        .expected(expected)
        .fix("upgrade the kernel to >= 6.1"),
    }
}
