//! Mistakes an operator makes, over the real binary in a temporary home: each gets a message
//! that names the file or field and the fix, the right exit code, and loses nothing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;

/// A file of `tests/fixtures/`.
fn fixture(name: &str) -> String {
    fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Start node `n` with `cores` shards and wait until its API on port `http` answers /health.
fn run_until_healthy(home: &Home, cores: u32, http: u16) -> (Running, std::net::SocketAddr) {
    let running = home.spawn_run("n", cores);
    let api: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    wait_for(Duration::from_secs(20), "the API", || {
        http_get(api, "/health").filter(|(s, _)| *s == 200)
    });
    (running, api)
}

fn fails_with(out: &std::process::Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected a failure");
    let text = stderr(out);
    for needle in needles {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn an_unknown_log_level_is_refused_naming_the_field_and_the_levels() {
    let home = Home::new();
    home.init_local("n");
    set_config_value(&home, "n", "level", "\"loud\"");
    let out = home.run(&["run", "--id", "n"]);
    fails_with(&out, &["config.toml", "logging.level", "loud", "\"info\""]);
}

#[test]
fn init_with_clashing_ports_writes_nothing_and_the_id_stays_usable() {
    let home = Home::new();
    let out = home.run(&[
        "init",
        "--id",
        "n",
        "--host",
        "127.0.0.1",
        "--mix-port",
        "14000",
        "--verloc-port",
        "14000",
    ]);
    fails_with(&out, &["mixnode.mix_port", "must all differ"]);
    assert!(
        !home.node_dir("n").exists(),
        "a refused init left {}",
        home.node_dir("n").display()
    );
    // The same id then initialises.
    assert_success(&home.run(&["init", "--id", "n", "--host", "127.0.0.1"]));
}

#[test]
fn init_that_cannot_write_leaves_no_half_made_id() {
    let home = Home::new();
    // The config file's temporary name is taken by a folder: the keys are written, then the
    // config cannot be (as on a full disk; this fails for root too).
    let config_dir = home.node_dir("n").join("config");
    fs::create_dir_all(config_dir.join("config.toml.tmp")).unwrap();
    let out = home.run(&["init", "--id", "n", "--host", "127.0.0.1"]);
    fs::remove_dir(config_dir.join("config.toml.tmp")).unwrap();
    fails_with(&out, &["config.toml", "nothing was kept"]);
    assert!(
        !home.node_dir("n").join("data").exists(),
        "the keys written before the failure are gone"
    );
    assert_success(&home.run(&["init", "--id", "n", "--host", "127.0.0.1"]));
}

#[test]
fn a_private_key_readable_by_others_is_refused_with_chmod() {
    let home = Home::new();
    home.init_local("n");
    let key = home.node_dir("n").join("data/private_identity.pem");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = home.run(&["run", "--id", "n"]);
    fails_with(
        &out,
        &["private_identity.pem", "can be read by others", "chmod 600"],
    );
    // node-details reads the keys too.
    fails_with(&home.run(&["node-details", "--id", "n"]), &["chmod 600"]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    assert_success(&home.run(&["node-details", "--id", "n"]));
}

#[test]
fn an_unreadable_key_or_config_gets_a_fix_that_keeps_the_identity() {
    if unsafe { libc::geteuid() } == 0 {
        visible_note("skipped: the unreadable-file check runs as a user other than root (root reads any file)");
        return;
    }
    let home = Home::new();
    home.init_local("n");
    let key = home.node_dir("n").join("data/public_sphinx.pem");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o000)).unwrap();
    let out = home.run(&["node-details", "--id", "n"]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    fails_with(&out, &["public_sphinx.pem", "the user that owns the file"]);
    let text = stderr(&out);
    assert!(!text.contains("new --id"), "{text}");
    assert_eq!(
        text.matches("ermission denied").count(),
        1,
        "the OS error once:\n{text}"
    );

    let config = home.config_file("n");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o000)).unwrap();
    let out = home.run(&["run", "--id", "n"]);
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    fails_with(&out, &["config.toml", "Fix:", "the user that owns"]);
}

#[test]
fn a_host_name_in_the_config_gets_the_address_fix() {
    let home = Home::new();
    home.init_local("n");
    set_config_value(&home, "n", "listening_address", "\"localhost\"");
    let out = home.run(&["run", "--id", "n"]);
    fails_with(&out, &["config.toml", "listening_address", "IP literals"]);
    assert!(!stderr(&out).contains("durations"), "{}", stderr(&out));
}

#[test]
fn a_taken_http_port_names_its_config_field() {
    let home = Home::new();
    let (_, _, http) = home.init_local("n");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", http)).unwrap();
    let out = home.run_bounded(&["run", "--id", "n"], Duration::from_secs(20));
    fails_with(&out, &["mixnode.http_api_port", "already in use"]);
}

#[test]
fn upgrade_finds_keys_that_moved_into_the_nodes_own_data_folder() {
    let home = Home::new();
    assert_success(&home.run(&["init", "--id", "fixture-node", "--host", "127.0.0.1"]));
    let text = fixture("config-0.11.toml");
    // The old file names /home/nym/..., where no key is: the keys sit in this node's data/.
    fs::write(home.config_file("fixture-node"), &text).unwrap();
    let out = home.run(&["upgrade", "--id", "fixture-node"]);
    assert_success(&out);
    assert!(
        stdout(&out).contains("the same name in this node's data/"),
        "{}",
        stdout(&out)
    );
    let upgraded = fs::read_to_string(home.config_file("fixture-node")).unwrap();
    assert!(!upgraded.contains("/home/nym"), "{upgraded}");
    assert_success(&home.run(&["node-details", "--id", "fixture-node"]));
}

#[test]
fn an_old_config_names_the_real_id_in_its_fix() {
    let home = Home::new();
    assert_success(&home.run(&["init", "--id", "old-one", "--host", "127.0.0.1"]));
    let text = fixture("config-0.11.toml");
    fs::write(home.config_file("old-one"), text).unwrap();
    let out = home.run(&["run", "--id", "old-one"]);
    fails_with(&out, &["nym-mixnode upgrade --id old-one"]);
    assert!(!stderr(&out).contains("<id>"), "{}", stderr(&out));
}

#[test]
fn describe_on_a_running_node_is_served_without_a_restart() {
    let home = Home::new();
    let (_, _, http) = home.init_local("n");
    let (running, api) = run_until_healthy(&home, 1, http);
    let out = home.run(&["describe", "--id", "n", "--name", "fresh name"]);
    assert_success(&out);
    assert!(
        stdout(&out).contains("no restart is needed"),
        "{}",
        stdout(&out)
    );
    wait_for(Duration::from_secs(15), "the new name", || {
        http_get(api, "/description").filter(|(_, body)| body.contains("fresh name"))
    });
    drop(running);
}

#[test]
fn an_idle_node_stops_without_waiting_out_the_drain() {
    let home = Home::new();
    let (_, _, http) = home.init_local("n");
    set_config_value(&home, "n", "drain_timeout", "\"20s\"");
    let (running, _) = run_until_healthy(&home, 2, http);
    let started = Instant::now();
    let out = running.stop_with(libc::SIGTERM, Duration::from_secs(30));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing in flight: it must not wait out the 20 s drain (the bound is generous, for a
    // busy machine).
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
}

#[test]
fn home_and_id_come_from_flags_or_the_environment() {
    let home = Home::new();
    let other = tempfile::tempdir().unwrap();
    let other_home = other.path().to_str().unwrap();
    // --home wins over NYM_MIXNODE_HOME (which Home sets).
    assert_success(&home.run(&[
        "--home",
        other_home,
        "init",
        "--id",
        "n",
        "--host",
        "127.0.0.1",
    ]));
    assert!(other.path().join("mixnodes/n/config/config.toml").is_file());
    assert!(!home.node_dir("n").exists());
    // NYM_MIXNODE_ID stands for --id.
    let out = home
        .cmd()
        .args(["--home", other_home, "node-details", "--output", "json"])
        .env("NYM_MIXNODE_ID", "n")
        .output()
        .unwrap();
    assert_success(&out);
    let details: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(details["host"], "127.0.0.1");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let home = Home::new();
    let (_, _, http) = home.init_local("n");
    set_config_value(&home, "n", "format", "\"json\"");
    let (running, _) = run_until_healthy(&home, 1, http);
    let out = running.stop_with(libc::SIGTERM, Duration::from_secs(30));
    assert!(out.status.success());
    let text = stderr(&out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "{text}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
    }
}

#[test]
fn under_systemd_the_node_says_ready_feeds_the_watchdog_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;
    let home = Home::new();
    let (_, _, http) = home.init_local("n");
    let socket_path = home.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let child = home
        .cmd()
        .args(["run", "--id", "n", "--cores", "1"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut messages: Vec<String> = Vec::new();
    let read_until = |what: &str, timeout: Duration, messages: &mut Vec<String>| {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut buf = [0u8; 256];
            if let Ok(n) = socket.recv(&mut buf) {
                messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if messages.last().is_some_and(|m| m.contains(what)) {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        read_until("READY=1", Duration::from_secs(20), &mut messages),
        "{messages:?}"
    );
    // Ready means serving.
    assert_eq!(
        http_get(([127, 0, 0, 1], http).into(), "/health").map(|(s, _)| s),
        Some(200)
    );
    // Fed at half of the 2 s interval.
    assert!(
        read_until("WATCHDOG=1", Duration::from_secs(15), &mut messages),
        "{messages:?}"
    );
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        read_until("STOPPING=1", Duration::from_secs(20), &mut messages),
        "{messages:?}"
    );
    let out = wait_exit(child, Duration::from_secs(30), "nym-mixnode run");
    assert!(out.status.success(), "{}", stderr(&out));
}
