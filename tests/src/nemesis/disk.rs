//! Disk faults on a stopped (or, for a full disk, running) node's files: wipe, bit flips in
//! segments and hard state, and a full disk on a loop-mounted ext4 (`LoopDisk`, unmounted on
//! drop). Layouts: docs/format.md#storage-engine.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;
use ringlog_engine::batch::{peek_header, peek_padding};

/// Segment header block; batches start after it.
const BLOCK_SIZE: u64 = 4096;
/// "Near the tail": a flip lands in a batch starting this close to the log's end.
const TAIL_REACH_BYTES: u64 = 512 * 1024;
/// Largest batch the scanner accepts (the node configs use 256 KiB).
const SCAN_BATCH_SIZE_MAX: usize = 1024 * 1024;
/// Hard-state file: two 4096-byte slots; bytes 0..40 of a slot hold its fields.
const HARD_STATE_SLOT_SIZE: u64 = 4096;
const HARD_STATE_FIELDS_SIZE: u64 = 40;

/// A small ext4 image loop-mounted at `mount`; unmounted (and the image deleted) on drop.
#[derive(Debug)]
pub struct LoopDisk {
    pub image: PathBuf,
    pub mount: PathBuf,
}

impl LoopDisk {
    /// Creates a sparse `size_mib` image, formats it ext4 (no reserved blocks) and mounts it
    /// at `mount`.
    pub fn create(image: &Path, mount: &Path, size_mib: u64) -> Result<LoopDisk, String> {
        let file = File::create(image).map_err(|e| format!("create {}: {e}", image.display()))?;
        file.set_len(size_mib << 20).map_err(|e| format!("size {}: {e}", image.display()))?;
        drop(file);
        // No blocks reserved for root: the nodes may run as root, and a full disk must be full.
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(image))?;
        fs::create_dir_all(mount).map_err(|e| format!("mkdir {}: {e}", mount.display()))?;
        if let Err(e) = run(Command::new("mount").arg("-o").arg("loop").arg(image).arg(mount)) {
            let _ = fs::remove_file(image);
            return Err(e);
        }
        Ok(LoopDisk { image: image.to_path_buf(), mount: mount.to_path_buf() })
    }

    /// Fills the file system with `filler-*` files (fallocate, halving the size until less
    /// than 64 KiB is left); returns the bytes taken.
    pub fn fill(&self) -> Result<u64, String> {
        let mut taken = 0;
        for n in 0..64 {
            let mut size = self.available_bytes()?;
            let path = self.mount.join(format!("filler-{n}"));
            while size >= 64 * 1024 {
                let ok = Command::new("fallocate")
                    .arg("-l")
                    .arg(size.to_string())
                    .arg(&path)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    taken += size;
                    break;
                }
                let _ = fs::remove_file(&path);
                size /= 2;
            }
            if size < 64 * 1024 {
                return Ok(taken);
            }
        }
        Ok(taken)
    }

    /// Removes the filler files.
    pub fn unfill(&self) -> Result<(), String> {
        let entries =
            fs::read_dir(&self.mount).map_err(|e| format!("read {}: {e}", self.mount.display()))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("filler-") {
                fs::remove_file(entry.path()).map_err(|e| format!("rm filler: {e}"))?;
            }
        }
        Ok(())
    }

    fn available_bytes(&self) -> Result<u64, String> {
        let output = Command::new("stat")
            .args(["-f", "-c", "%f %S"])
            .arg(&self.mount)
            .output()
            .map_err(|e| format!("stat -f: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut parts = text.split_whitespace().map(|p| p.parse::<u64>());
        match (parts.next(), parts.next()) {
            (Some(Ok(blocks)), Some(Ok(size))) => Ok(blocks * size),
            _ => Err(format!("stat -f {}: {text}", self.mount.display())),
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        for attempt in 0..20 {
            let ok = Command::new("umount")
                .arg(&self.mount)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                let _ = fs::remove_file(&self.image);
                return;
            }
            if attempt == 19 {
                eprintln!("nemesis: umount {} failed; lazy unmount", self.mount.display());
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
                let _ = fs::remove_file(&self.image);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether loop mounts work here: `Err` says why not (not root, no `losetup -f`, ...).
pub fn loop_mounts_supported() -> Result<(), String> {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_string))
        .unwrap_or_default();
    if uid.split_whitespace().nth(2) != Some("0") {
        return Err(format!("mounting needs root (effective uid: {uid})"));
    }
    run(Command::new("losetup").arg("-f")).map_err(|e| format!("no free loop device: {e}"))
}

/// Deletes everything inside `dir` (the dir itself may be a mount point and stays).
pub fn wipe(dir: &Path) -> Result<(), String> {
    for entry in fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
        let path = entry.map_err(|e| format!("read {}: {e}", dir.display()))?.path();
        let removed =
            if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed.map_err(|e| format!("remove {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A batch found by scanning a segment: its file position and length.
#[derive(Clone, Copy, Debug)]
struct BatchAt {
    position: u64,
    length: u64,
}

/// Flips one bit in a batch starting within `TAIL_REACH_BYTES` of the end of the partition's
/// log (the newest segment holding batches). Returns what it did.
pub fn flip_tail(partition_dir: &Path, rng: &mut SmallRng) -> Result<String, String> {
    let segments = segments(partition_dir)?;
    for segment in segments.iter().rev() {
        let batches = scan(segment)?;
        let Some(last) = batches.last() else { continue };
        let end = last.position + last.length;
        let near: Vec<BatchAt> =
            batches.iter().copied().filter(|b| b.position + TAIL_REACH_BYTES >= end).collect();
        let batch = near[rng.gen_range(0..near.len())];
        let what = flip_in(segment, batch, rng)?;
        return Ok(format!("{what}, {} bytes before the log's end", end - batch.position));
    }
    Err(format!("no batch in any segment of {}", partition_dir.display()))
}

/// Flips one bit in a batch of a sealed segment (one with an index file).
pub fn flip_sealed(partition_dir: &Path, rng: &mut SmallRng) -> Result<String, String> {
    let sealed: Vec<PathBuf> =
        segments(partition_dir)?.into_iter().filter(|s| s.with_extension("idx").exists()).collect();
    if sealed.is_empty() {
        return Err(format!("no sealed segment in {}", partition_dir.display()));
    }
    let segment = &sealed[rng.gen_range(0..sealed.len())];
    let batches = scan(segment)?;
    if batches.is_empty() {
        return Err(format!("no batch in sealed {}", segment.display()));
    }
    let batch = batches[rng.gen_range(0..batches.len())];
    flip_in(segment, batch, rng)
}

/// Flips one bit in the fields of a hard-state slot: the newest valid one (highest
/// generation among the slots whose magic and crc check) with probability 3/4, else the other.
pub fn flip_hard_state(partition_dir: &Path, rng: &mut SmallRng) -> Result<String, String> {
    let path = partition_dir.join("hard_state");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let generation = |slot: u64| -> Option<u64> {
        let mut buf = vec![0u8; HARD_STATE_SLOT_SIZE as usize];
        file.read_exact_at(&mut buf, slot * HARD_STATE_SLOT_SIZE).ok()?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buf[0..8]);
        hasher.update(&buf[12..]);
        let valid = buf[0..4] == *b"RLGH" && buf[8..12] == hasher.finalize().to_le_bytes();
        valid.then(|| u64::from_le_bytes(buf[16..24].try_into().unwrap()))
    };
    let (g0, g1) = (generation(0), generation(1));
    let newest = u64::from(g1 > g0);
    let slot = if rng.gen_ratio(3, 4) { newest } else { 1 - newest };
    let bit = rng.gen_range(0..HARD_STATE_FIELDS_SIZE * 8);
    flip_bit(&file, slot * HARD_STATE_SLOT_SIZE + bit / 8, (bit % 8) as u8)?;
    Ok(format!(
        "{} slot {slot} ({}; valid generations {g0:?}/{g1:?}) byte {} bit {}",
        path.display(),
        if slot == newest { "newest" } else { "older" },
        bit / 8,
        bit % 8
    ))
}

fn flip_in(segment: &Path, batch: BatchAt, rng: &mut SmallRng) -> Result<String, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .map_err(|e| format!("open {}: {e}", segment.display()))?;
    let bit = rng.gen_range(0..batch.length * 8);
    flip_bit(&file, batch.position + bit / 8, (bit % 8) as u8)?;
    Ok(format!(
        "{} batch at {} ({} bytes) byte +{} bit {}",
        segment.display(),
        batch.position,
        batch.length,
        bit / 8,
        bit % 8
    ))
}

fn flip_bit(file: &File, position: u64, bit: u8) -> Result<(), String> {
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).map_err(|e| format!("read at {position}: {e}"))?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, position).map_err(|e| format!("write at {position}: {e}"))?;
    file.sync_all().map_err(|e| format!("sync: {e}"))
}

/// The partition's segment files in log order (names are zero-padded base offsets).
fn segments(partition_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = fs::read_dir(partition_dir)
        .map_err(|e| format!("read {}: {e}", partition_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().as_bytes()[0].is_ascii_digit())
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The valid batches of a segment from block 1 on, up to the first item that is neither a
/// valid batch header nor a padding marker.
fn scan(segment: &Path) -> Result<Vec<BatchAt>, String> {
    let bytes = fs::read(segment).map_err(|e| format!("read {}: {e}", segment.display()))?;
    let mut out = Vec::new();
    let mut position = BLOCK_SIZE as usize;
    while position < bytes.len() {
        let rest = &bytes[position..];
        if let Ok(header) = peek_header(rest, SCAN_BATCH_SIZE_MAX) {
            let length = header.length();
            if length > rest.len() {
                break;
            }
            out.push(BatchAt { position: position as u64, length: length as u64 });
            position += length;
        } else if let Ok(length) = peek_padding(rest, rest.len()) {
            position += length;
        } else {
            break;
        }
    }
    Ok(out)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
