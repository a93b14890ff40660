//! Issue 17 acceptance: "A C program using only `ringlog.h` and `pkg-config --cflags --libs
//! ringlog` produces to and consumes from a 3-node cluster, under ASan/UBSan".
//!
//! 1. `ringlog-capi-install` installs this run's libringlog into a clean temporary prefix;
//!    the installed shared library's SONAME is `libringlog.so.0` (`readelf -d`) and the
//!    `libringlog.so.0` and `libringlog.so` links are in place.
//! 2. `tests/c/client_test.c` is compiled with `-fsanitize=address,undefined` and the flags
//!    of `pkg-config --cflags --libs ringlog` only (`PKG_CONFIG_PATH` = the prefix's
//!    `lib/pkgconfig`): no `-I` into the source tree; the program needs `libringlog.so.0`.
//! 3. Three real `ringlog serve` processes on 127.0.0.1 (3 partitions) make the cluster; the
//!    program runs against them with `LD_LIBRARY_PATH` = the prefix's `lib/` and
//!    LeakSanitizer on, and must exit 0 with no sanitizer report.
//!
//! The `ringlog` binary: `RINGLOG_BIN` if set, else this test builds it with the cargo that
//! runs it (`cargo build --bin ringlog`, same target dir and profile; a no-op when `cargo
//! test` at the root already built it). Cargo only gives `CARGO_BIN_EXE_*` for a package's own
//! binaries, and capi cannot depend on the server package (the server does not link the C
//! ABI); building it here keeps the test in the crate it checks and working from a clean
//! clone with `cargo test -p ringlog-capi`.
//!
//! Needs `cc` (with libasan/libubsan), `pkg-config` and `readelf`: without a C compiler the
//! test says SKIPPED loudly like the other C tests; a missing `pkg-config` or `readelf` fails
//! it with the package to install.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{compiler, crate_dir, library_dir, run, scratch, Build};

/// Partitions of the test cluster.
const PARTITIONS: u32 = 3;
/// How long a node has to print its ready line (loaded 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a tool that must exist; panics with what to install if it does not.
fn tool(name: &str, package: &str) -> Command {
    match Command::new(name).arg("--version").output() {
        Ok(_) => Command::new(name),
        Err(error) => panic!(
            "`{name}` is needed by this test and cannot be run ({error}): install it \
             (Debian/Ubuntu: apt-get install {package})"
        ),
    }
}

fn output_of(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Installs this run's library into `prefix` with the installer binary.
fn install(prefix: &Path) {
    let out = output_of(
        Command::new(env!("CARGO_BIN_EXE_ringlog-capi-install"))
            .arg("--prefix")
            .arg(prefix)
            .arg("--lib-dir")
            .arg(library_dir()),
    );
    eprintln!("{out}");
}

/// The `ringlog` server binary (see the module doc).
fn ringlog_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGLOG_BIN") {
        return PathBuf::from(path);
    }
    // <target>/<profile>/deps/<this test>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("<target>/<profile>");
    let target_dir = profile_dir.parent().expect("<target>");
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("a profile name");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = crate_dir().parent().expect("the workspace root");
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--quiet", "--bin", "ringlog", "--target-dir"])
        .arg(target_dir);
    if profile == "release" {
        command.arg("--release");
    }
    let status = command.status().expect("run cargo build --bin ringlog");
    assert!(status.success(), "cargo build --bin ringlog failed ({status})");
    let bin = profile_dir.join("ringlog");
    assert!(bin.is_file(), "{bin:?} missing after cargo build");
    bin
}

/// A running `ringlog serve` process, killed on drop.
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates of a mutual-TLS cluster: one CA signs the nodes' and the client's.
struct TlsFiles {
    ca: PathBuf,
    /// Per node id 1..=3: (cert, key).
    nodes: Vec<(PathBuf, PathBuf)>,
    client: (PathBuf, PathBuf),
}

impl TlsFiles {
    fn create(dir: &Path) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "capi-test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        // Every node certificate names `ringlog-node` (the client's default server name) and
        // `node-N.ringlog` (node N's identity to its peers; README.md#tls).
        let leaf = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let sans = vec!["ringlog-node".to_string(), format!("{name}.ringlog")];
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            let (cert_path, key_path) =
                (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        };
        let nodes = (1..=3).map(|id| leaf(&format!("node-{id}"))).collect();
        let client = leaf("client-1");
        TlsFiles { ca, nodes, client }
    }

    /// Node `id`'s `[tls]` section: TLS on both listeners, client certificates required.
    fn section(&self, id: usize) -> String {
        let (cert, key) = &self.nodes[id - 1];
        format!(
            "[tls]\nmode = \"tls\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            self.ca.display(),
            cert.display(),
            key.display(),
            self.ca.display()
        )
    }
}

/// Three node configs on free loopback ports (plaintext, or mutual TLS with `tls`); returns
/// them and the client addresses.
fn cluster_configs(root: &Path, tls: Option<&TlsFiles>) -> (Vec<PathBuf>, Vec<String>) {
    let listeners: Vec<std::net::TcpListener> =
        (0..9).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(listeners);
    let mut peers = String::new();
    let mut clients = Vec::new();
    for id in 1..=3usize {
        let base = (id - 1) * 3;
        let client = format!("127.0.0.1:{}", ports[base + 1]);
        peers.push_str(&format!(
            "[[peers]]\nid = {id}\npeer = \"127.0.0.1:{}\"\nclient = \"{client}\"\n\n",
            ports[base]
        ));
        clients.push(client);
    }
    let configs = (1..=3usize)
        .map(|id| {
            let data = root.join(format!("node-{id}"));
            let text = format!(
                "node_id = {id}\ncluster_id = 17\ndata_dir = \"{}\"\nshards = 1\n\
                 io_memory = 524288\npartitions = {PARTITIONS}\npinning = \"never\"\n\n\
                 [listen]\nmetrics = \"127.0.0.1:{}\"\n\n{peers}\
                 [storage]\nsegment_size = 4194304\nflush_bytes_max = 1048576\n\
                 queued_bytes_max = 4194304\nbatch_size_max = 1048576\n\
                 tail_cache_bytes_max = 1048576\n\n{}",
                data.display(),
                ports[(id - 1) * 3 + 2],
                tls.map_or("[tls]\nmode = \"plaintext\"\n".to_string(), |t| t.section(id)),
            );
            let path = root.join(format!("node-{id}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    (configs, clients)
}

/// Starts `ringlog serve --config <config>` and waits for its ready line.
fn start_node(bin: &Path, config: &Path, id: usize) -> NodeProcess {
    let log = config.with_extension("log");
    let stderr = std::fs::File::create(&log).expect("create the node log");
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn ringlog serve");
    let mut node = NodeProcess { child, log };
    let stdout = node.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if line.starts_with("ringlog: ready") {
                let _ = tx.send(line);
                break;
            }
        }
        // Keep draining so the node never blocks on a full pipe.
        for _ in lines {}
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            assert!(line.contains(&format!("node={id} ")), "node {id} ready line: {line}");
            return node;
        }
        let exited = node.child.try_wait().expect("try_wait");
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            match exited {
                Some(status) => {
                    panic!("node {id} exited with {status} before it was ready:\n{log}")
                }
                None => panic!("node {id} not ready after {READY_TIMEOUT:?}; log:\n{log}"),
            }
        }
    }
}

#[test]
fn a_sanitized_c_program_built_with_pkg_config_produces_to_and_consumes_from_three_nodes() {
    let Some(cc) = compiler() else { return };
    let dir = scratch();

    // 1. Install into a clean prefix; check the SONAME and the links.
    let prefix = dir.path().join("prefix");
    install(&prefix);
    let lib = prefix.join("lib");
    let real = lib.join(format!("libringlog.so.{}", env!("CARGO_PKG_VERSION")));
    assert!(real.is_file(), "{real:?}");
    for (link, target) in [
        ("libringlog.so.0", real.file_name().unwrap()),
        ("libringlog.so", "libringlog.so.0".as_ref()),
    ] {
        let found = std::fs::read_link(lib.join(link)).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert_eq!(found.as_os_str(), target, "{link}");
    }
    assert!(lib.join("libringlog.a").is_file());
    assert!(prefix.join("include/ringlog.h").is_file());
    let dynamic = output_of(tool("readelf", "binutils").arg("-d").arg(&real));
    assert!(
        dynamic.contains("Library soname: [libringlog.so.0]"),
        "readelf -d {real:?} shows no SONAME libringlog.so.0:\n{dynamic}"
    );

    // 2. Compile with pkg-config's flags only.
    let pkg_config_path = lib.join("pkgconfig");
    let pkg = |args: &[&str]| {
        output_of(
            tool("pkg-config", "pkg-config").args(args).env("PKG_CONFIG_PATH", &pkg_config_path),
        )
    };
    assert_eq!(pkg(&["--modversion", "ringlog"]).trim(), env!("CARGO_PKG_VERSION"));
    let flags = pkg(&["--cflags", "--libs", "ringlog"]);
    assert!(flags.contains("-lringlog"), "{flags}");
    assert!(flags.contains(&format!("-I{}", prefix.join("include").display())), "{flags}");
    let program = dir.path().join("client_test");
    let mut compile = Command::new(&cc);
    compile
        .args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"])
        .arg("-fno-omit-frame-pointer")
        .arg(crate_dir().join("tests/c/client_test.c"))
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&program);
    output_of(&mut compile);
    let needed = output_of(tool("readelf", "binutils").arg("-d").arg(&program));
    assert!(needed.contains("Shared library: [libringlog.so.0]"), "{needed}");

    // 3. A 3-node cluster of real processes.
    let bin = ringlog_bin();
    let (configs, clients) = cluster_configs(dir.path(), None);
    let nodes: Vec<NodeProcess> =
        configs.iter().enumerate().map(|(i, config)| start_node(&bin, config, i + 1)).collect();
    let bootstrap = clients.join(",");

    let lib_path = lib.display().to_string();
    let partitions = PARTITIONS.to_string();
    let args = [Path::new(&bootstrap), Path::new(&partitions)];
    // Exit 0, "PASS", no sanitizer report (support::run checks the last two), within
    // support::PROGRAM_TIMEOUT; LeakSanitizer on.
    let output = run(&program, &args, Build::Sanitized, &[("LD_LIBRARY_PATH", &lib_path)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("client_test: PASS"), "{stdout}");
    eprintln!("{stdout}");

    // The example of capi/README.md, built the way it says (pkg-config only), runs too.
    let example = dir.path().join("cluster_client");
    output_of(
        Command::new(&cc)
            .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror"])
            .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"])
            .arg(crate_dir().join("examples/cluster_client.c"))
            .args(flags.split_whitespace())
            .arg("-o")
            .arg(&example),
    );
    let output = run(
        &example,
        &[Path::new(&bootstrap)],
        Build::Sanitized,
        &[("LD_LIBRARY_PATH", &lib_path)],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("offset") && stdout.contains(": third"), "{stdout}");
    assert!(stdout.contains("cluster_client: ok"), "{stdout}");
    drop(nodes);

    // 4. The same program over mutual TLS: a cluster that requires client certificates, the
    // client given the CA, its certificate and key through `ringlog_client_options`.
    let tls_root = dir.path().join("tls-cluster");
    std::fs::create_dir_all(&tls_root).unwrap();
    let tls = TlsFiles::create(&tls_root.join("certs"));
    let (configs, clients) = cluster_configs(&tls_root, Some(&tls));
    let nodes: Vec<NodeProcess> =
        configs.iter().enumerate().map(|(i, config)| start_node(&bin, config, i + 1)).collect();
    let bootstrap = clients.join(",");
    let args = [
        Path::new(&bootstrap),
        Path::new(&partitions),
        tls.ca.as_path(),
        tls.client.0.as_path(),
        tls.client.1.as_path(),
    ];
    let output = run(&program, &args, Build::Sanitized, &[("LD_LIBRARY_PATH", &lib_path)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("client_test: over TLS"), "{stdout}");
    assert!(stdout.contains("client_test: PASS"), "{stdout}");
    // Without the CA (plaintext) the same cluster refuses the client: no leader is ever
    // learned (the example connects lazily and fails on its first call).
    let output = Command::new(&example)
        .arg(&bootstrap)
        .env("LD_LIBRARY_PATH", &lib_path)
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("run the example");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a plaintext client was served by a TLS cluster: {stderr}");
    eprintln!("a plaintext client of the TLS cluster: {}", stderr.trim());
    drop(nodes);
}
