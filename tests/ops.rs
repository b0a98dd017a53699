//! Operations over the real binary: IPv6 binding, an address the machine does not have, the
//! open-files limit (warning at start, exhaustion at run time), and the summary line.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Set `logging.summary_interval` in node `id`'s config.
fn set_summary_interval(home: &Home, id: &str, value: &str) {
    let path = home.config_file(id);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("summary_interval") {
                format!("summary_interval = \"{value}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
}

#[test]
fn init_on_ipv6_loopback_runs_and_serves_health_on_it() {
    let home = Home::new();
    let [mix, verloc, http] = free_ports();
    let out = home.run(&[
        "init",
        "--id",
        "v6",
        "--host",
        "::1",
        "--mix-port",
        &mix.to_string(),
        "--verloc-port",
        &verloc.to_string(),
        "--http-api-port",
        &http.to_string(),
    ]);
    assert_success(&out);
    let node = home.spawn_run("v6", 1);
    let api: SocketAddr = format!("[::1]:{http}").parse().unwrap();
    let (status, body) = wait_for(Duration::from_secs(20), "/health on [::1]", || {
        http_get(api, "/health")
    });
    assert_eq!(status, 200, "{body}");
    assert!(TcpStream::connect(format!("[::1]:{mix}")).is_ok());
    let out = node.stop_with(libc::SIGTERM, Duration::from_secs(15));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_address_this_machine_lacks_fails_with_the_announce_host_advice() {
    let home = Home::new();
    // TEST-NET-1: never on an interface here, so bind fails locally with AddrNotAvailable.
    assert_success(&home.run(&["init", "--id", "n", "--host", "192.0.2.1"]));
    let out = home.run(&["run", "--id", "n", "--cores", "1"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    for part in ["192.0.2.1", "--announce-host", "ip addr"] {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
}

#[test]
fn a_low_open_files_limit_is_warned_about_and_exhaustion_does_not_kill_the_node() {
    let home = Home::new();
    let (mix, _verloc, http) = home.init_local("n");
    set_summary_interval(&home, "n", "1s");
    // Soft and hard limit 40: the node cannot raise it, and about 25 descriptors are left for
    // connections once it runs.
    let mut cmd = home.cmd();
    cmd.env("RUST_LOG", "info");
    let child = std::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 40 && exec \"$0\" run --id n --cores 1")
        .arg(env!("CARGO_BIN_EXE_nym-mixnode"))
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let node = Running(Some(child));
    let api: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    wait_for(Duration::from_secs(20), "/health", || {
        http_get(api, "/health")
    });

    // More connections than descriptors: the kernel completes them, the node cannot accept.
    let conns: Vec<TcpStream> = (0..60)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", mix)).ok())
        .collect();
    assert!(conns.len() > 40, "connected {}", conns.len());
    std::thread::sleep(Duration::from_millis(1500));
    drop(conns);
    // Descriptors come back: the node serves again.
    wait_for(Duration::from_secs(20), "/health after exhaustion", || {
        http_get(api, "/health").filter(|(status, _)| *status == 200)
    });
    std::thread::sleep(Duration::from_millis(1200));
    let out = node.stop_with(libc::SIGTERM, Duration::from_secs(15));
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    for part in [
        "open-files limit is 40",
        "LimitNOFILE=65536",
        "ulimit -n 65536",
        "out of file descriptors",
        "packets mixed since the last summary",
    ] {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
    // The field must be there, with a count above zero in some line.
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("packets mixed since the last summary"))
        .map(|l| {
            let (_, rest) = l
                .split_once("accept_errors=")
                .unwrap_or_else(|| panic!("no accept_errors field in: {l}"));
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("accept_errors is not a count in: {l}"))
        })
        .collect();
    let errors = counts.iter().any(|n| *n > 0);
    assert!(errors, "a summary line counts the accept errors:\n{text}");
}
