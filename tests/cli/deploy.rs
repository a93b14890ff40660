//! deploy/ end to end, so that the unit file, the example config and the README's install
//! section cannot rot: the unit file is parsed (and checked by `systemd-analyze verify` when
//! it is installed), `deploy/install.sh` lays the files out under a temporary root, and a
//! 3-node cluster is started from the installed example config (node ids, addresses, data
//! dirs and segment sizes substituted) with the unit's ExecStart command line and limits.
//!
//! systemd itself does not run here: the unit is never installed into the real system.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Nodes of the example cluster.
const NODES: u32 = 3;
/// Longest a node may take from spawn to its ready line.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest the produces may take to find every partition's leader after the nodes are ready.
const PRODUCE_WAIT_MAX: Duration = Duration::from_secs(30);
/// Sizes substituted into the example: 1 MiB segments instead of 256 MiB, so that 3 nodes ×
/// 8 partitions preallocate megabytes, not gigabytes; a retention this disk can hold (the
/// host check refuses a node whose free space is below its retention).
const TEST_STORAGE: [(&str, i64); 5] = [
    ("segment_size", 1 << 20),
    ("flush_bytes_max", 256 << 10),
    ("queued_bytes_max", 4 << 20),
    ("batch_size_max", 256 << 10),
    ("retention_bytes_max", 64 << 20),
];

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `[Service]` (or any section's) `Key=value` lines of a unit file; a key given several
/// times keeps every value in order.
fn unit_section(text: &str, section: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not Key=value: {line}"));
        if current == section {
            keys.entry(key.trim().to_string()).or_default().push(value.trim().to_string());
        }
    }
    keys
}

fn unit_file() -> (PathBuf, String) {
    let path = workspace().join("deploy/ringlog.service");
    let text = std::fs::read_to_string(&path).expect("deploy/ringlog.service");
    (path, text)
}

fn one<'a>(keys: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match keys.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: expected exactly one value, found {other:?}"),
    }
}

#[test]
fn unit_file_runs_serve_on_the_installed_config_with_limits_and_a_graceful_stop() {
    let (_, text) = unit_file();
    let service = unit_section(&text, "Service");
    assert_eq!(
        one(&service, "ExecStart"),
        "/usr/local/bin/ringlog serve --config /etc/ringlog/node.toml"
    );
    assert_eq!(
        one(&service, "ExecStartPre"),
        "/usr/local/bin/ringlog config check --config /etc/ringlog/node.toml"
    );
    assert_eq!(one(&service, "User"), "ringlog");
    assert_eq!(one(&service, "StateDirectory"), "ringlog");
    assert_eq!(one(&service, "StateDirectoryMode"), "0700");
    assert_eq!(one(&service, "UMask"), "0077");
    assert_eq!(one(&service, "Restart"), "on-failure");
    assert_eq!(one(&service, "KillSignal"), "SIGTERM");
    // sd_notify: READY=1 once every shard recovered and listens; the start may take as long
    // as a node waits for its shards (START_WAIT_MAX); SIGHUP reloads.
    assert_eq!(one(&service, "Type"), "notify");
    assert_eq!(one(&service, "NotifyAccess"), "main");
    let start_secs: u64 = one(&service, "TimeoutStartSec").parse().expect("TimeoutStartSec in s");
    assert!(
        start_secs >= ringlog_node::node::START_WAIT_MAX.as_secs(),
        "TimeoutStartSec={start_secs}: shorter than a node waits for its shards to recover"
    );
    assert_eq!(one(&service, "ExecReload"), "/bin/kill -HUP $MAINPID");
    let stop_secs: u64 = one(&service, "TimeoutStopSec").parse().expect("TimeoutStopSec in s");
    assert!(stop_secs >= 30, "TimeoutStopSec={stop_secs}: too short for a leadership hand-off");
    let nofile = unit_limit_value(one(&service, "LimitNOFILE"));
    assert!(nofile.is_none_or(|n| n >= 65536), "LimitNOFILE={nofile:?}: doctor WARNs below 65536");
    assert_memlock_covers_the_example(one(&service, "LimitMEMLOCK"));
    // The CPU affinity hooks are there, commented out.
    assert!(text.contains("\n#CPUAffinity="), "commented CPUAffinity hook");
}

/// `LimitMEMLOCK` must cover what the example config's shards lock: shards × 3 × io_memory.
fn assert_memlock_covers_the_example(limit: &str) {
    let example = example_config();
    let shards = example["shards"].as_integer().expect("the example sets shards") as u64;
    let io_memory = example["io_memory"].as_integer().expect("the example sets io_memory") as u64;
    let need = shards * 3 * io_memory;
    if let Some(bytes) = unit_limit_value(limit) {
        assert!(bytes >= need, "LimitMEMLOCK={limit} is below shards × 3 × io_memory = {need}");
    }
}

/// A systemd resource limit value: `infinity` → `None`, else a number with an optional
/// binary suffix (K, M, G, T).
fn unit_limit_value(value: &str) -> Option<u64> {
    if value == "infinity" {
        return None;
    }
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => panic!("limit {value}: unknown suffix {other}"),
    };
    Some(digits.parse::<u64>().unwrap_or_else(|_| panic!("limit {value}")) * factor)
}

fn example_config() -> toml::Table {
    let text = std::fs::read_to_string(workspace().join("deploy/node.example.toml")).unwrap();
    text.parse::<toml::Table>().expect("the example parses as TOML")
}

#[test]
fn example_config_keeps_its_data_in_the_units_state_directory() {
    let (_, text) = unit_file();
    let service = unit_section(&text, "Service");
    let example = example_config();
    let data_dir = example["data_dir"].as_str().expect("data_dir");
    assert_eq!(data_dir, format!("/var/lib/{}", one(&service, "StateDirectory")));
    let peers = example["peers"].as_array().expect("[[peers]]");
    assert_eq!(peers.len(), 3, "a 3-node example");
}

#[test]
fn unit_file_passes_systemd_analyze_verify_when_systemd_is_installed() {
    let Ok(version) = std::process::Command::new("systemd-analyze").arg("--version").output()
    else {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    };
    assert!(version.status.success());
    let (_, text) = unit_file();
    // verify wants the executables to exist: point them at the binary cargo built.
    let binary = env!("CARGO_BIN_EXE_ringlog");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let unit = dir.path().join("ringlog.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/ringlog", binary)).unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> =
        stderr.lines().filter(|line| line.contains("ringlog.service")).collect();
    assert!(output.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{stderr}");
}

/// `storage.retention_bytes_max` of a config text.
fn retention_bytes(config: &str) -> i64 {
    let config: toml::Table = config.parse().unwrap();
    config["storage"]["retention_bytes_max"].as_integer().expect("retention_bytes_max")
}

/// Runs `deploy/install.sh` into `root` with the binary cargo built.
fn install_into(root: &Path) -> Output {
    Command::new("bash")
        .arg(workspace().join("deploy/install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_ringlog"), "--no-user", "--root"])
        .arg(root)
        .output()
        .expect("run deploy/install.sh")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_script_lays_out_the_files_the_unit_and_the_readme_name() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path();
    let output = install_into(root);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(mode(&root.join("usr/local/bin/ringlog")), 0o755);
    assert_eq!(mode(&root.join("etc/ringlog")), 0o750);
    assert_eq!(mode(&root.join("etc/ringlog/node.toml")), 0o640);
    assert_eq!(mode(&root.join("var/lib/ringlog")), 0o700);
    assert_eq!(mode(&root.join("etc/systemd/system/ringlog.service")), 0o644);
    for doc in ["README.md", "tuning.md", "config.md", "metrics.md"] {
        assert!(root.join("usr/local/share/doc/ringlog").join(doc).is_file(), "{doc}");
    }
    // Man pages and the bash completion, generated by the installed binary.
    for page in ["ringlog.1", "ringlog-serve.1", "ringlog-produce.1", "ringlog-consume.1"] {
        let path = root.join("usr/local/share/man/man1").join(page);
        assert_eq!(mode(&path), 0o644, "{page}");
        assert!(std::fs::read_to_string(&path).unwrap().contains(".TH ringlog"), "{page}");
    }
    let completion = root.join("usr/local/share/bash-completion/completions/ringlog");
    assert_eq!(mode(&completion), 0o644);
    assert!(std::fs::read_to_string(&completion).unwrap().contains("complete -F _ringlog"));
    let installed = std::fs::read_to_string(root.join("etc/ringlog/node.toml")).unwrap();
    let example = std::fs::read_to_string(workspace().join("deploy/node.example.toml")).unwrap();
    assert_eq!(installed, example);
    // The paths the unit runs are the paths the script installed.
    let (_, unit) = unit_file();
    let service = unit_section(&unit, "Service");
    for word in one(&service, "ExecStart").split_whitespace().filter(|w| w.starts_with('/')) {
        assert!(root.join(&word[1..]).exists(), "ExecStart names {word}, not installed");
    }
    // A second run keeps an edited config.
    std::fs::write(root.join("etc/ringlog/node.toml"), "node_id = 2\n").unwrap();
    assert!(install_into(root).status.success());
    let kept = std::fs::read_to_string(root.join("etc/ringlog/node.toml")).unwrap();
    assert_eq!(kept, "node_id = 2\n");
    // The README's install section gives the same commands and paths.
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let install = readme
        .split("\n## Install")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a ## Install section");
    for needle in [
        "cargo build --release",
        "deploy/install.sh",
        "/etc/ringlog/node.toml",
        "ringlog config check --config /etc/ringlog/node.toml",
        "ringlog doctor",
        "--data-dir /var/lib/ringlog",
        "--retention-bytes",
        "systemctl enable --now ringlog",
        "ringlog: ready node=",
    ] {
        assert!(install.contains(needle), "README's install section lacks `{needle}`");
    }
}

/// A run of consecutive free 127.0.0.1 ports, held until released.
struct PortRange {
    base: u16,
    listeners: Vec<TcpListener>,
}

/// Reserves `count` consecutive free ports (shard `s` of a node listens on port + s).
fn reserve_ports(count: u16, salt: u16) -> PortRange {
    // Deterministic walk over 20000..60000 from a per-process start; bounded attempts.
    let start =
        20_000 + ((std::process::id() as u16).wrapping_mul(31).wrapping_add(salt * 97)) % 40_000;
    for attempt in 0..2_000u16 {
        let base = 20_000 + (start - 20_000 + attempt * count) % 40_000;
        let listeners: Result<Vec<TcpListener>, _> =
            (0..count).map(|s| TcpListener::bind(("127.0.0.1", base + s))).collect();
        if let Ok(listeners) = listeners {
            return PortRange { base, listeners };
        }
    }
    panic!("no {count} consecutive free ports on 127.0.0.1");
}

/// One node's machine: its install root and its ports.
struct Machine {
    id: u32,
    root: PathBuf,
    client: PortRange,
    peer: PortRange,
    metrics: PortRange,
}

impl Machine {
    fn config_path(&self) -> PathBuf {
        self.root.join("etc/ringlog/node.toml")
    }
    fn data_dir(&self) -> PathBuf {
        self.root.join("var/lib/ringlog")
    }
    fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client.base))
    }
    fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics.base))
    }
}

/// The installed example config of `machine`, with what differs on a test host substituted:
/// node id, addresses (127.0.0.1, free ports), data dir, segment sizes. Everything else is
/// the example's.
fn substituted_config(machine: &Machine, machines: &[Machine]) -> String {
    let text = std::fs::read_to_string(machine.config_path()).unwrap();
    let mut config: toml::Table = text.parse().unwrap();
    config.insert("node_id".into(), toml::Value::Integer(i64::from(machine.id)));
    config.insert("data_dir".into(), machine.data_dir().display().to_string().into());
    let listen = config["listen"].as_table_mut_or_panic("listen");
    listen.insert("client".into(), machine.client_addr().to_string().into());
    listen.insert("peer".into(), format!("127.0.0.1:{}", machine.peer.base).into());
    listen.insert("metrics".into(), machine.metrics_addr().to_string().into());
    let peers = config.get_mut("peers").and_then(toml::Value::as_array_mut).expect("[[peers]]");
    assert_eq!(peers.len(), machines.len(), "the example has one [[peers]] per node");
    for (entry, peer) in peers.iter_mut().zip(machines) {
        let entry = entry.as_table_mut().expect("peer entry");
        assert_eq!(entry["id"].as_integer(), Some(i64::from(peer.id)), "peers are listed by id");
        entry.insert("client".into(), peer.client_addr().to_string().into());
        entry.insert("peer".into(), format!("127.0.0.1:{}", peer.peer.base).into());
    }
    let storage = config["storage"].as_table_mut_or_panic("storage");
    for (key, value) in TEST_STORAGE {
        assert!(storage.contains_key(key), "the example no longer sets storage.{key}");
        storage.insert(key.into(), toml::Value::Integer(value));
    }
    toml::to_string(&config).unwrap()
}

trait TableExt {
    fn as_table_mut_or_panic(&mut self, name: &str) -> &mut toml::Table;
}

impl TableExt for toml::Value {
    fn as_table_mut_or_panic(&mut self, name: &str) -> &mut toml::Table {
        self.as_table_mut().unwrap_or_else(|| panic!("[{name}] is not a table"))
    }
}

/// A node process started like systemd would; killed (SIGKILL) if still running on drop.
struct NodeProcess {
    id: u32,
    child: Child,
    stderr_path: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// `prlimit` arguments applying the unit's LimitMEMLOCK and LimitNOFILE to the child, capped
/// at this process's hard limits: systemd (as PID 1) may raise them, a test without
/// CAP_SYS_RESOURCE (a container) may not. The unit's values themselves are checked against
/// the example's need in `unit_file_runs_serve_on_the_installed_config_with_limits_…`.
fn unit_limits(service: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let capped = |key: &str, limits_name: &str| -> String {
        let unit = unit_limit_value(one(service, key));
        match (unit, hard_limit(limits_name)) {
            (Some(unit), Some(hard)) => unit.min(hard).to_string(),
            (Some(unit), None) => unit.to_string(),
            (None, Some(hard)) => hard.to_string(),
            (None, None) => "unlimited".to_string(),
        }
    };
    let memlock = capped("LimitMEMLOCK", "Max locked memory");
    let nofile = capped("LimitNOFILE", "Max open files");
    vec![format!("--memlock={memlock}:{memlock}"), format!("--nofile={nofile}:{nofile}")]
}

/// This process's hard limit named `name` in /proc/self/limits (`None`: unlimited).
fn hard_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits.lines().find(|line| line.starts_with(name)).expect("limit listed");
    let hard = line[name.len()..].split_whitespace().nth(1).expect("hard limit column");
    if hard == "unlimited" {
        None
    } else {
        Some(hard.parse().expect("hard limit number"))
    }
}

/// Starts the unit's ExecStart with every absolute path moved under the machine's root, in
/// `sh -c 'umask <UMask>; exec ...'` under `prlimit` with the unit's limits, and waits for
/// the ready line on stdout.
fn start_like_the_unit(machine: &Machine, service: &BTreeMap<String, Vec<String>>) -> NodeProcess {
    let exec_start: Vec<String> = one(service, "ExecStart")
        .split_whitespace()
        .map(|word| match word.strip_prefix('/') {
            Some(path) => machine.root.join(path).display().to_string(),
            None => word.to_string(),
        })
        .collect();
    let stderr_path = machine.root.join("serve.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let umask = one(service, "UMask");
    let mut command = Command::new("prlimit");
    command
        .args(unit_limits(service))
        .args(["sh", "-c", &format!("umask {umask} && exec \"$@\""), "sh"])
        .args(&exec_start)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = command.spawn().expect("spawn prlimit sh ringlog serve");
    let stdout = child.stdout.take().unwrap();
    let node = NodeProcess { id: machine.id, child, stderr_path };
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let expected = format!("ringlog: ready node={} client={} ", machine.id, machine.client_addr());
    // The ready line is the first line serve prints on stdout (logs go to stderr).
    match lines_rx.recv_timeout(READY_WAIT_MAX) {
        Ok(line) if line.starts_with(&expected) => {
            assert!(line.ends_with(" shards=2"), "ready line: {line}");
            node
        }
        Ok(line) => panic!("node {}: unexpected stdout line {line:?}\n{}", machine.id, node.log()),
        Err(_) => {
            panic!("node {}: no ready line within {READY_WAIT_MAX:?}\n{}", machine.id, node.log())
        }
    }
}

fn ringlog_at(binary: &Path, args: &[&str]) -> Output {
    Command::new(binary).args(args).output().expect("run ringlog")
}

/// Produces one record to `partition` through the CLI, retrying while the cluster elects.
fn produce(
    binary: &Path,
    bootstrap: &str,
    partition: u32,
    value: &str,
    nodes: &[NodeProcess],
) -> u64 {
    let deadline = Instant::now() + PRODUCE_WAIT_MAX;
    let partition = partition.to_string();
    loop {
        let args =
            ["produce", "--bootstrap", bootstrap, "--partition", &partition, "--value", value];
        let output = ringlog_at(binary, &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() {
            return stdout.trim().parse().unwrap_or_else(|_| panic!("produce printed {stdout:?}"));
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> =
                nodes.iter().map(|n| format!("node {}:\n{}", n.id, n.log())).collect();
            panic!(
                "produce to partition {partition} failed until the deadline: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Sends the unit's KillSignal to the node.
fn send_kill_signal(node: &NodeProcess, service: &BTreeMap<String, Vec<String>>) {
    let signal = one(service, "KillSignal").trim_start_matches("SIG").to_string();
    let status = Command::new("kill")
        .args([format!("-{signal}"), node.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {}", node.child.id());
}

/// Waits up to the unit's TimeoutStopSec for exit status 0 (systemd would SIGKILL after).
fn wait_for_clean_exit(node: &mut NodeProcess, service: &BTreeMap<String, Vec<String>>) {
    let timeout = Duration::from_secs(one(service, "TimeoutStopSec").parse().unwrap());
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            assert_eq!(
                status.code(),
                Some(0),
                "node {} after KillSignal:\n{}",
                node.id,
                node.log()
            );
            return;
        }
        assert!(Instant::now() < deadline, "node {} still running after {timeout:?}", node.id);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many nodes' /metrics say they lead each partition.
fn leaders_per_partition(machines: &[Machine], partitions: u32) -> Vec<u32> {
    let mut leaders = vec![0u32; partitions as usize];
    for machine in machines {
        let answer = scrape(machine.metrics_addr());
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        for (partition, count) in leaders.iter_mut().enumerate() {
            let line = format!(
                "ringlog_partition_role{{node=\"{}\",partition=\"{partition}\",role=\"leader\"}} 1\n",
                machine.id
            );
            *count += u32::from(answer.contains(&line));
        }
    }
    leaders
}

/// Files and directories under `dir` that group or others can access.
fn exposed_paths(dir: &Path) -> Vec<String> {
    let mut exposed = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        if metadata.permissions().mode() & 0o077 != 0 {
            exposed.push(format!("{} {:o}", path.display(), metadata.permissions().mode() & 0o777));
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
    }
    exposed
}

#[test]
fn three_nodes_start_from_the_installed_example_with_the_units_command_line_and_serve_produces() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (_, unit) = unit_file();
    let service = unit_section(&unit, "Service");
    let example = example_config();
    let shards = example["shards"].as_integer().unwrap() as u16;
    let partitions = example["partitions"].as_integer().unwrap() as u32;
    assert_eq!(example["peers"].as_array().unwrap().len() as u32, NODES);

    let mut machines: Vec<Machine> = (1..=NODES)
        .map(|id| Machine {
            id,
            root: dir.path().join(format!("node{id}")),
            client: reserve_ports(shards, id as u16 * 3),
            peer: reserve_ports(shards, id as u16 * 3 + 1),
            metrics: reserve_ports(1, id as u16 * 3 + 2),
        })
        .collect();
    for machine in &machines {
        let output = install_into(&machine.root);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let configs: Vec<String> = machines.iter().map(|m| substituted_config(m, &machines)).collect();
    for (machine, config) in machines.iter().zip(&configs) {
        std::fs::write(machine.config_path(), config).unwrap();
        let binary = machine.root.join("usr/local/bin/ringlog");
        let config_path = machine.config_path();
        // The unit's ExecStartPre, then the README's doctor step with the unit's limits.
        let check =
            ringlog_at(&binary, &["config", "check", "--config", config_path.to_str().unwrap()]);
        assert!(check.status.success(), "config check: {}", String::from_utf8_lossy(&check.stderr));
        let data_dir = machine.data_dir();
        let doctor = Command::new("prlimit")
            .args(unit_limits(&service))
            .arg(&binary)
            .args([
                "doctor",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--shards",
                &shards.to_string(),
            ])
            .args(["--io-memory", &example["io_memory"].as_integer().unwrap().to_string()])
            .args(["--retention-bytes", &retention_bytes(config).to_string()])
            .output()
            .expect("run doctor");
        assert!(doctor.status.success(), "doctor: {}", String::from_utf8_lossy(&doctor.stdout));
    }
    // Free the reserved ports just before the nodes bind them.
    for machine in &mut machines {
        machine.client.listeners.clear();
        machine.peer.listeners.clear();
        machine.metrics.listeners.clear();
    }
    let mut nodes: Vec<NodeProcess> =
        machines.iter().map(|m| start_like_the_unit(m, &service)).collect();

    let bootstrap: Vec<String> = machines.iter().map(|m| m.client_addr().to_string()).collect();
    let bootstrap = bootstrap.join(",");
    let binary = machines[0].root.join("usr/local/bin/ringlog");
    for partition in 0..partitions {
        let offset =
            produce(&binary, &bootstrap, partition, &format!("record-{partition}"), &nodes);
        assert_eq!(offset, 0, "the first record of partition {partition}");
    }
    assert_eq!(produce(&binary, &bootstrap, 0, "second", &nodes), 1);
    // Every node serves /metrics on its listen.metrics; together they lead each partition
    // once (scraped again while a leadership change is under way between two scrapes).
    let deadline = Instant::now() + PRODUCE_WAIT_MAX;
    loop {
        let leaders = leaders_per_partition(&machines, partitions);
        if leaders.iter().all(|&n| n == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "leaders per partition: {leaders:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // `systemctl stop ringlog` on every machine at once.
    for node in &nodes {
        send_kill_signal(node, &service);
    }
    for node in &mut nodes {
        wait_for_clean_exit(node, &service);
    }
    for machine in &machines {
        let exposed = exposed_paths(&machine.data_dir());
        assert!(exposed.is_empty(), "data files readable beyond the owner: {exposed:?}");
    }
}
