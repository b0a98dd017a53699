//! Helpers shared by the integration tests: temporary homes, the real binary, free ports and a
//! tiny HTTP client. Everything stays in a temporary directory and on 127.0.0.1.

#![allow(dead_code)]

pub mod mixnet;
pub mod noise_peer;
pub mod nym_api;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A temporary home for one test; removed on drop.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The binary with this home; HOME too, so nothing can reach the real ~/.nym.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nym-mixnode"));
        cmd.env("NYM_MIXNODE_HOME", self.path())
            .env("HOME", self.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn nym-mixnode")
    }

    /// Run the binary with `args`, killing it and failing the test if it has not exited
    /// within `timeout`.
    pub fn run_bounded(&self, args: &[&str], timeout: Duration) -> Output {
        let child = self
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nym-mixnode");
        wait_exit(child, timeout, &format!("nym-mixnode {args:?}"))
    }

    /// Start `run --id ID --cores N` with its output piped; killed on drop.
    pub fn spawn_run(&self, id: &str, cores: u32) -> Running {
        let child = self
            .cmd()
            .args(["run", "--id", id, "--cores", &cores.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nym-mixnode run");
        Running(Some(child))
    }

    pub fn node_dir(&self, id: &str) -> PathBuf {
        self.path().join("mixnodes").join(id)
    }

    pub fn config_file(&self, id: &str) -> PathBuf {
        self.node_dir(id).join("config").join("config.toml")
    }

    /// `init` on 127.0.0.1 with OS-chosen free ports; returns (mix, verloc, http) ports.
    pub fn init_local(&self, id: &str) -> (u16, u16, u16) {
        let ports = free_ports();
        let ports = (ports[0], ports[1], ports[2]);
        let out = self.run(&[
            "init",
            "--id",
            id,
            "--host",
            "127.0.0.1",
            "--mix-port",
            &ports.0.to_string(),
            "--verloc-port",
            &ports.1.to_string(),
            "--http-api-port",
            &ports.2.to_string(),
        ]);
        assert_success(&out);
        ports
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// A port the OS reports free right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 0");
    l.local_addr().expect("addr").port()
}

/// Three distinct ports the OS reports free right now: held open together while picked, so
/// that the OS cannot hand out one of them twice.
pub fn free_ports() -> [u16; 3] {
    let held: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 0"))
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    [ports[0], ports[1], ports[2]]
}

/// GET `path` from `addr`; (status, body). None when the connection fails.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Poll until `f` returns Some, or panic after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that the peer closed `stream` (end of stream, or a reset) within `timeout`, and
/// not that the wait ran out: a read timeout is a failure here, as is any byte sent.
pub fn assert_closed_by_peer(stream: &mut TcpStream, timeout: Duration, what: &str) {
    use std::io::ErrorKind;
    stream.set_read_timeout(Some(timeout)).expect("set timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: expected the peer to close, got {n} bytes"),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("{what}: still open after {timeout:?}: the peer did not close it")
        }
        Err(e) => panic!("{what}: unexpected read error {e}"),
    }
}

/// Sum over shards of a per-shard metric in the /metrics of the node at `api`, for samples
/// whose labels contain `label` (pass "" for all).
pub fn metric_sum(api: SocketAddr, name: &str, label: &str) -> Option<u64> {
    let (status, body) = http_get(api, "/metrics")?;
    if status != 200 {
        return None;
    }
    let prefix = format!("{name}{{");
    Some(
        body.lines()
            .filter(|line| line.starts_with(&prefix) && line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// Add `line` at the start of table `[section]` of node `id`'s config.toml.
pub fn add_config_line(home: &Home, id: &str, section: &str, line: &str) {
    let path = home.config_file(id);
    let text = std::fs::read_to_string(&path).expect("config readable");
    let header = format!("[{section}]\n");
    assert!(
        text.contains(&header),
        "[{section}] not in {}",
        path.display()
    );
    let edited = text.replacen(&header, &format!("{header}{line}\n"), 1);
    std::fs::write(&path, edited).expect("config writable");
}

/// Set `key` (the first line starting with it) to `value` in node `id`'s config.toml.
pub fn set_config_value(home: &Home, id: &str, key: &str, value: &str) {
    let path = home.config_file(id);
    let text = std::fs::read_to_string(&path).expect("config readable");
    let mut found = false;
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if !found && l.trim_start().starts_with(&format!("{key} ")) {
                found = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "{key} not in {}", path.display());
    std::fs::write(&path, edited.join("\n") + "\n").expect("config writable");
}

/// A node of the real binary, initialised in a temporary home on 127.0.0.1 with OS-chosen
/// ports: its addresses and its Sphinx hop. [`BinaryNode::start`] runs it (again and again).
pub struct BinaryNode {
    pub home: Home,
    pub mix: SocketAddr,
    pub api: SocketAddr,
    pub hop: nym_mixnode::sphinx::RouteHop,
}

impl BinaryNode {
    /// The node's id in its home.
    pub const ID: &'static str = "node";

    pub fn init() -> BinaryNode {
        use nym_mixnode::keys::{KeyPaths, NodeKeys};
        let home = Home::new();
        let (mix_port, _, http_port) = home.init_local(Self::ID);
        let data = home.node_dir(Self::ID).join("data");
        let keys = NodeKeys::load(&KeyPaths::in_data_dir(&data)).expect("keys written by init");
        let mix = SocketAddr::from(([127, 0, 0, 1], mix_port));
        BinaryNode {
            hop: nym_mixnode::sphinx::RouteHop {
                address: mix,
                public_key: keys.sphinx_public(),
                delay: Duration::ZERO,
            },
            home,
            mix,
            api: SocketAddr::from(([127, 0, 0, 1], http_port)),
        }
    }

    /// Run it with `cores` shards, once its /metrics answers.
    pub fn start(&self, cores: u32) -> Running {
        let running = self.home.spawn_run(Self::ID, cores);
        wait_for(Duration::from_secs(30), "the node's /metrics", || {
            metric_sum(self.api, "nym_mixnode_packets_received_total", "")
        });
        running
    }

    /// Packets dropped for `reason` (its label), all shards.
    pub fn dropped(&self, reason: &str) -> u64 {
        metric_sum(
            self.api,
            "nym_mixnode_packets_dropped_total",
            &format!("reason=\"{reason}\""),
        )
        .expect("metrics")
    }

    /// Wait until at least `at_least` packets were received.
    pub fn wait_received(&self, at_least: u64, timeout: Duration) {
        wait_for(timeout, "packets counted", || {
            let received = metric_sum(self.api, "nym_mixnode_packets_received_total", "")?;
            (received >= at_least).then_some(())
        });
    }

    /// Wait until at least `at_least` packets were received and each was forwarded, dropped,
    /// or (one of the node's own loops) came back.
    pub fn wait_settled(&self, at_least: u64, timeout: Duration) {
        wait_for(timeout, "packets forwarded or dropped", || {
            let got = metric_sum(self.api, "nym_mixnode_packets_received_total", "")?;
            let forwarded = metric_sum(self.api, "nym_mixnode_packets_forwarded_total", "")?;
            let dropped = metric_sum(self.api, "nym_mixnode_packets_dropped_total", "")?;
            let looped = metric_sum(self.api, "nym_mixnode_loops_returned_total", "")?;
            (got >= at_least && forwarded + dropped + looped == got).then_some(())
        });
    }
}

/// Wait for `child` to exit; past `timeout`, kill it and fail the test with its stderr.
pub fn wait_exit(mut child: Child, timeout: Duration, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} still running after {timeout:?}\nstderr:\n{}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A child process killed on drop if still running.
pub struct Running(pub Option<Child>);

impl Running {
    pub fn pid(&self) -> i32 {
        self.0.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Send `signal` and wait for exit; the output.
    pub fn stop_with(mut self, signal: i32, timeout: Duration) -> Output {
        let child = self.0.take().expect("child");
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        wait_exit(child, timeout, &format!("process (signal {signal})"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Say `note` where a person sees it: straight to the terminal's stderr, past the test
/// harness's capture of `println!` and `eprintln!`.
pub fn visible_note(note: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "note: {note}");
}

/// Whether the tool `name` (one of those `.ci/run` installs) can run. A missing one is said
/// on the terminal, and the check that needs it is skipped; under CI (`CI=true`) a missing
/// tool fails the test instead, unless `.ci/run` said it could not install it
/// (`NYM_MIXNODE_CI_MISSING` lists those, and `.ci/run` prints why).
pub fn tool_present(name: &str, skipped: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let under_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let excused = std::env::var("NYM_MIXNODE_CI_MISSING")
        .is_ok_and(|list| list.split_whitespace().any(|t| t == name));
    assert!(
        !under_ci || excused,
        "{name} is not installed under CI: .ci/run should have installed it ({skipped})"
    );
    visible_note(&format!("{name} is not installed; skipping {skipped}"));
    false
}
