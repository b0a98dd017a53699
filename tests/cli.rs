//! The operator commands over the real binary, each in a temporary home.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

fn details(home: &Home, id: &str) -> serde_json::Value {
    let out = home.run(&["node-details", "--id", id, "--output", "json"]);
    assert_success(&out);
    serde_json::from_str(stdout(&out).trim()).expect("node-details prints one JSON object")
}

fn key_files(home: &Home, id: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(home.node_dir(id).join("data"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn init_creates_config_and_keys_with_private_modes() {
    let home = Home::new();
    let out = home.run(&[
        "init",
        "--id",
        "winston",
        "--host",
        "127.0.0.1",
        "--announce-host",
        "2001:db8::7",
    ]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.contains("(mixnode - version"),
        "banner missing:\n{text}"
    );
    let d = details(&home, "winston");
    assert!(text.contains(d["identity_key"].as_str().unwrap()));
    assert!(text.contains(d["sphinx_key"].as_str().unwrap()));
    assert!(text.contains(d["noise_key"].as_str().unwrap()));
    assert!(text.contains("Announced address: 2001:db8::7"));
    assert_eq!(d["host"], "127.0.0.1");
    assert_eq!(d["announce_host"], "2001:db8::7");
    assert_eq!(
        (
            d["mix_port"].as_u64(),
            d["verloc_port"].as_u64(),
            d["http_api_port"].as_u64()
        ),
        (Some(1789), Some(1790), Some(8000))
    );
    let names: Vec<_> = key_files(&home, "winston")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "private_identity.pem",
            "private_sphinx.pem",
            "private_x25519_noise.pem",
            "public_identity.pem",
            "public_sphinx.pem",
            "public_x25519_noise.pem"
        ]
    );
    assert!(
        d["noise_key"].as_str().is_some_and(|k| k.len() >= 40),
        "node-details shows the Noise key: {d}"
    );
    for private in [
        "private_identity.pem",
        "private_sphinx.pem",
        "private_x25519_noise.pem",
    ] {
        let mode = fs::metadata(home.node_dir("winston").join("data").join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{private}");
    }
    // With rotation off (the default), the static key is the one live key.
    assert_eq!(d["rotation_mode"], "off");
    assert_eq!(
        d["sphinx_keys"],
        serde_json::json!([{"rotation_id": 0, "public_key": d["sphinx_key"], "state": "primary"}])
    );
    // Keys decode to 32 bytes in base58.
    for k in ["identity_key", "sphinx_key"] {
        assert_eq!(
            bs58::decode(d[k].as_str().unwrap())
                .into_vec()
                .unwrap()
                .len(),
            32
        );
    }
}

#[test]
fn reinit_keeps_keys_byte_for_byte_and_applies_only_given_settings() {
    let home = Home::new();
    assert_success(&home.run(&[
        "init",
        "--id",
        "n",
        "--host",
        "127.0.0.1",
        "--verloc-port",
        "2790",
    ]));
    let keys_before = key_files(&home, "n");
    let before = details(&home, "n");
    let out = home.run(&[
        "init",
        "--id",
        "n",
        "--host",
        "127.0.0.2",
        "--mix-port",
        "3789",
    ]);
    assert_success(&out);
    assert!(stdout(&out).contains("already exists"), "{}", stdout(&out));
    assert_eq!(
        key_files(&home, "n"),
        keys_before,
        "key files must not change"
    );
    let after = details(&home, "n");
    assert_eq!(after["identity_key"], before["identity_key"]);
    assert_eq!(after["host"], "127.0.0.2");
    assert_eq!(after["mix_port"], 3789);
    assert_eq!(
        after["verloc_port"], 2790,
        "a setting not given keeps its value"
    );
}

#[test]
fn init_refuses_host_names_and_ports_in_hosts() {
    let home = Home::new();
    let out = home.run(&["init", "--id", "n", "--host", "mixnode.example.com"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not an IP address"),
        "{}",
        stderr(&out)
    );
    let out = home.run(&["init", "--id", "n", "--host", "1.2.3.4:1789"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--mix-port"), "{}", stderr(&out));
    let out = home.run(&[
        "init",
        "--id",
        "n",
        "--host",
        "127.0.0.1",
        "--announce-host",
        "[2001:db8::1]:1789",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("includes a port"), "{}", stderr(&out));
    assert!(
        !home.node_dir("n").exists(),
        "nothing may be created by a refused init"
    );
}

#[test]
fn sign_prints_a_signature_that_verifies_and_the_transfer_line() {
    let home = Home::new();
    assert_success(&home.run(&["init", "--id", "n", "--host", "127.0.0.1"]));
    let text = "@winston_smith punk1rytmasg5kavx4xasa0zg0u69jus8fn0r5j7nnt";
    let out = home.run(&["sign", "--id", "n", "--text", text]);
    assert_success(&out);
    let printed = stdout(&out);
    let signature = printed
        .lines()
        .find_map(|l| l.strip_prefix("Signature is: "))
        .expect("Signature is: line")
        .trim()
        .to_string();
    assert!(printed.contains(&format!(
        "/transfer punk1rytmasg5kavx4xasa0zg0u69jus8fn0r5j7nnt {signature}"
    )));

    let identity = details(&home, "n")["identity_key"]
        .as_str()
        .unwrap()
        .to_string();
    let key: [u8; 32] = bs58::decode(&identity)
        .into_vec()
        .unwrap()
        .try_into()
        .unwrap();
    let key = VerifyingKey::from_bytes(&key).unwrap();
    let sig: [u8; 64] = bs58::decode(&signature)
        .into_vec()
        .unwrap()
        .try_into()
        .unwrap();
    key.verify(text.as_bytes(), &Signature::from_bytes(&sig))
        .expect("signature verifies");
    assert!(key
        .verify(b"something else", &Signature::from_bytes(&sig))
        .is_err());

    let out = home.run(&["sign", "--id", "n", "--text", "hello", "--output", "json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["text"], "hello");
    assert_eq!(v["identity_key"], identity.as_str());
    let sig: [u8; 64] = bs58::decode(v["signature"].as_str().unwrap())
        .into_vec()
        .unwrap()
        .try_into()
        .unwrap();
    key.verify(b"hello", &Signature::from_bytes(&sig))
        .expect("json signature verifies");

    let out = home.run(&["sign", "--id", "n", "--text", "no claim here"]);
    assert_success(&out);
    assert!(!stdout(&out).contains("/transfer"));
}

#[test]
fn describe_by_flags_writes_description_toml() {
    let home = Home::new();
    assert_success(&home.run(&["init", "--id", "n", "--host", "127.0.0.1"]));
    let out = home.run(&[
        "describe",
        "--id",
        "n",
        "--name",
        "winston",
        "--description",
        "a node",
        "--link",
        "https://example.org",
        "--location",
        "Lisbon",
    ]);
    assert_success(&out);
    let text = fs::read_to_string(home.node_dir("n").join("config/description.toml")).unwrap();
    let v: toml::Table = text.parse().unwrap();
    assert_eq!(v["name"].as_str(), Some("winston"));
    assert_eq!(v["description"].as_str(), Some("a node"));
    assert_eq!(v["link"].as_str(), Some("https://example.org"));
    assert_eq!(v["location"].as_str(), Some("Lisbon"));
    // A later call with one flag keeps the others.
    assert_success(&home.run(&["describe", "--id", "n", "--location", "Porto"]));
    let v: toml::Table = fs::read_to_string(home.node_dir("n").join("config/description.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(v["name"].as_str(), Some("winston"));
    assert_eq!(v["location"].as_str(), Some("Porto"));
    let out = home.run(&["describe", "--id", "missing", "--name", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("init"), "{}", stderr(&out));
}

/// Install a fixture as node `fixture-node`'s config, with key paths pointing at real keys.
fn install_fixture(home: &Home, fixture: &str) -> String {
    assert_success(&home.run(&["init", "--id", "fixture-node", "--host", "127.0.0.1"]));
    let text = fs::read_to_string(format!(
        "{}/tests/fixtures/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("/home/nym/.nym", home.path().to_str().unwrap());
    fs::write(home.config_file("fixture-node"), &text).unwrap();
    text
}

#[test]
fn upgrade_from_0_10_keeps_a_copy_and_runs_afterwards() {
    let home = Home::new();
    let old = install_fixture(&home, "config-0.10.toml");
    // A node of 0.10 had no Noise key pair.
    let data = home.node_dir("fixture-node").join("data");
    for file in ["private_x25519_noise.pem", "public_x25519_noise.pem"] {
        fs::remove_file(data.join(file)).unwrap();
    }
    let keys = key_files(&home, "fixture-node");
    // run refuses the old file and names the fix.
    let out = home.run(&["run", "--id", "fixture-node"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("0.10.1") && stderr(&out).contains("nym-mixnode upgrade"),
        "{}",
        stderr(&out)
    );

    let out = home.run(&["upgrade", "--id", "fixture-node"]);
    assert_success(&out);
    let backup = home
        .node_dir("fixture-node")
        .join("config/config.toml.0.10.1.bak");
    assert_eq!(
        fs::read_to_string(&backup).unwrap(),
        old,
        "the old file is kept as it was"
    );
    // The old keys are as they were; a Noise key pair is new (a node made before Noise).
    let after = key_files(&home, "fixture-node");
    let (noise, old_keys): (Vec<_>, Vec<_>) = after
        .into_iter()
        .partition(|(name, _)| name.contains("x25519_noise"));
    assert_eq!(old_keys, keys);
    assert_eq!(
        noise.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["private_x25519_noise.pem", "public_x25519_noise.pem"]
    );
    assert!(
        stdout(&out).contains("made the node's Noise key pair"),
        "{}",
        stdout(&out)
    );
    let d = details(&home, "fixture-node");
    assert!(d["noise_key"].is_string(), "{d}");
    assert_eq!(d["host"], "1.2.3.4");
    assert_eq!(d["announce_host"], "1.2.3.4");
    assert_eq!(d["mix_port"], 1789);
    assert_eq!(d["verloc_port"], 1790);
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
    // Upgrading again does nothing.
    let out = home.run(&["upgrade", "--id", "fixture-node"]);
    assert_success(&out);
    assert!(stdout(&out).contains("nothing to do"));
}

#[test]
fn upgrade_from_0_11_keeps_announce_host() {
    let home = Home::new();
    install_fixture(&home, "config-0.11.toml");
    assert_success(&home.run(&["upgrade", "--id", "fixture-node"]));
    assert!(home
        .node_dir("fixture-node")
        .join("config/config.toml.0.11.0.bak")
        .exists());
    let d = details(&home, "fixture-node");
    assert_eq!(d["host"], "1.2.3.4");
    assert_eq!(d["announce_host"], "5.6.7.8");
    assert_eq!(d["http_api_port"], 8000);
}

#[test]
fn a_config_newer_than_the_binary_is_refused() {
    let home = Home::new();
    assert_success(&home.run(&["init", "--id", "n", "--host", "127.0.0.1"]));
    let file = home.config_file("n");
    let text = fs::read_to_string(&file).unwrap();
    let newer = text.replace(
        &format!("version = \"{}\"", env!("CARGO_PKG_VERSION")),
        "version = \"9.0.0\"",
    );
    fs::write(&file, &newer).unwrap();
    for cmd in [&["upgrade", "--id", "n"][..], &["run", "--id", "n"][..]] {
        let out = home.run(cmd);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("9.0.0") && stderr(&out).contains("newer"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        newer,
        "a refused upgrade writes nothing"
    );
}

/// Each bad config is refused before anything starts, with the file, the place and a fix.
#[test]
fn bad_configs_are_refused_with_file_field_and_fix() {
    let home = Home::new();
    assert_success(&home.run(&["init", "--id", "n", "--host", "127.0.0.1"]));
    let file = home.config_file("n");
    let good = fs::read_to_string(&file).unwrap();
    let data = home.node_dir("n").join("data");
    let file_name = file.to_str().unwrap().to_string();

    let check = |what: &str, expect: &[&str]| {
        let out = home.run(&["run", "--id", "n"]);
        assert!(!out.status.success(), "{what}: run must fail");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{what}: panic\n{err}");
        for e in expect {
            assert!(err.contains(e), "{what}: expected {e:?} in\n{err}");
        }
    };

    fs::write(&file, good.replace("[engine]", "[engine")).unwrap();
    check("bad toml", &[&file_name, "line", "Fix"]);

    fs::write(&file, good.replace("cores = 0", "cores = 0\nturbo = true")).unwrap();
    check("unknown key", &[&file_name, "turbo", "line", "Fix"]);

    let port_line = good
        .lines()
        .find(|l| l.starts_with("mix_port"))
        .unwrap()
        .to_string();
    fs::write(&file, good.replace(&port_line, "mix_port = 70000")).unwrap();
    check("port out of range", &[&file_name, "mix_port", "65535"]);

    fs::write(&file, good.replace(&port_line, "mix_port = 0")).unwrap();
    check("port zero", &[&file_name, "mixnode.mix_port", "Fix"]);

    fs::write(
        &file,
        good.replace("delay_max = \"10s\"", "delay_max = \"ten seconds\""),
    )
    .unwrap();
    check("bad duration", &[&file_name, "delay_max", "Fix"]);

    fs::write(
        &file,
        good.replace("mode = \"off\"", "mode = \"sometimes\""),
    )
    .unwrap();
    check(
        "unknown rotation mode",
        &[&file_name, "mode", "line", "Fix"],
    );

    fs::write(&file, good.replace("mode = \"off\"", "mode = \"network\"")).unwrap();
    check(
        "network rotation without nym-api",
        &[&file_name, "rotation.nym_api", "is not set", "https://"],
    );

    fs::write(
        &file,
        good.replace("mode = \"off\"", "mode = \"local\"")
            .replace("validity_epochs = 24", "validity_epochs = 0"),
    )
    .unwrap();
    check(
        "no epochs a rotation",
        &[&file_name, "rotation.validity_epochs", "Fix"],
    );

    fs::write(
        &file,
        good.replace(
            "next_hop_queue_bytes_max = 8388608",
            "next_hop_queue_bytes_max = 1000",
        ),
    )
    .unwrap();
    check(
        "a per-next-hop byte limit below one large frame",
        &[&file_name, "engine.next_hop_queue_bytes_max", "262144"],
    );

    fs::write(
        &file,
        good.replace(
            "connections_reserved_known = 1024",
            "connections_reserved_known = 4096",
        ),
    )
    .unwrap();
    check(
        "all inbound room reserved",
        &[&file_name, "engine.connections_reserved_known", "below"],
    );

    fs::write(
        &file,
        good.replace("forward_to = \"known\"", "forward_to = \"friends\""),
    )
    .unwrap();
    check("unknown forward_to", &[&file_name, "forward_to", "Fix"]);

    fs::write(
        &file,
        good.replacen("source = \"\"", "source = \"nym-api\"", 1),
    )
    .unwrap();
    check(
        "nym-api topology without nym-api",
        &[&file_name, "topology.source", "rotation.nym_api"],
    );

    fs::write(&file, &good).unwrap();
    let sphinx_public = data.join("public_sphinx.pem");
    let saved = fs::read(&sphinx_public).unwrap();
    fs::write(
        &sphinx_public,
        "-----BEGIN X25519 PUBLIC KEY-----\nAAEC\n-----END X25519 PUBLIC KEY-----\n",
    )
    .unwrap();
    check(
        "key file of the wrong length",
        &["public_sphinx.pem", "3 bytes", "expected 32"],
    );
    fs::remove_file(&sphinx_public).unwrap();
    check(
        "missing key file",
        &[
            "public_sphinx_key_file",
            "public_sphinx.pem",
            "does not exist",
        ],
    );
    fs::write(&sphinx_public, saved).unwrap();

    fs::remove_file(&file).unwrap();
    check("missing config", &[&file_name, "does not exist", "init"]);
}

#[test]
fn run_serves_health_and_stops_cleanly_on_sigint_and_sigterm() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let home = Home::new();
        let (mix, _verloc, http) = home.init_local("n");
        assert_success(&home.run(&["describe", "--id", "n", "--name", "tester"]));
        let node = home.spawn_run("n", 1);
        let api: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
        let (status, body) = wait_for(Duration::from_secs(20), "/health", || {
            http_get(api, "/health")
        });
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "up");
        assert!(v["uptime_s"].as_u64().is_some());
        let (status, body) = http_get(api, "/description").unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("tester"), "{body}");
        let (status, _) = http_get(api, "/no-such-route").unwrap();
        assert_eq!(status, 404);
        // The mix port is bound and accepts connections.
        assert!(std::net::TcpStream::connect(("127.0.0.1", mix)).is_ok());
        let out = node.stop_with(signal, Duration::from_secs(15));
        assert!(
            out.status.success(),
            "exit after signal {signal}: {:?}\n{}",
            out.status,
            stderr(&out)
        );
        assert!(
            http_get(api, "/health").is_none(),
            "the API must be gone after shutdown"
        );
    }
}

#[test]
fn help_covers_every_command() {
    let home = Home::new();
    let out = home.run(&["--help"]);
    assert_success(&out);
    for cmd in ["init", "run", "sign", "describe", "upgrade", "node-details"] {
        assert!(stdout(&out).contains(cmd), "{cmd} missing from --help");
        let sub = home.run(&[cmd, "--help"]);
        assert_success(&sub);
        assert!(stdout(&sub).contains("--id"), "{cmd} --help lacks --id");
    }
}

#[test]
fn probe_says_a_running_node_is_mixing_and_a_dead_one_is_not() {
    let home = Home::new();
    let (mix, _verloc, http) = home.init_local("n");
    let node = home.spawn_run("n", 2);
    let api: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    wait_for(Duration::from_secs(20), "/health", || {
        http_get(api, "/health")
    });

    let out = home.run(&["probe", "--id", "n", "--count", "10"]);
    assert_success(&out);
    assert!(stdout(&out).contains("MIXING: all 10"), "{}", stdout(&out));

    let key = details(&home, "n")["sphinx_key"]
        .as_str()
        .unwrap()
        .to_string();
    let target = format!("127.0.0.1:{mix}");
    let out = home.run(&[
        "probe",
        "--target",
        &target,
        "--sphinx-key",
        &key,
        "--count",
        "5",
        "--output",
        "json",
    ]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["mixing"], true);
    assert_eq!(v["returned"], 5);
    assert_eq!(v["early"], 0);
    for p in v["packets"].as_array().unwrap() {
        assert!(p["measured_ms"].as_f64().unwrap() >= p["requested_ms"].as_f64().unwrap());
    }

    // A key that is not the node's: the node drops the packets, the probe says so.
    let other = bs58::encode([9u8; 32]).into_string();
    let out = home.run(&[
        "probe",
        "--target",
        &target,
        "--sphinx-key",
        &other,
        "--count",
        "3",
    ]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("NOT MIXING"), "{}", stdout(&out));

    let out = node.stop_with(libc::SIGTERM, Duration::from_secs(15));
    assert!(out.status.success());

    // Nobody listens there any more.
    let out = home.run(&[
        "probe",
        "--target",
        &target,
        "--sphinx-key",
        &key,
        "--count",
        "3",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn run_refuses_a_topology_or_nym_api_it_cannot_fetch_before_starting() {
    let home = Home::new();
    home.init_local("n");
    let out = home.run(&[
        "run",
        "--id",
        "n",
        "--topology",
        "ftp://example.org/topology.json",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--topology"), "{err}");
    assert!(err.contains("ftp://example.org/topology.json"), "{err}");
    assert!(err.contains("http:// or https://"), "{err}");
    assert!(!err.contains("node started"), "{err}");
    let out = home.run(&["run", "--id", "n", "--nym-api", "validator.example/api"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--nym-api"), "{err}");
    // Without a scheme it reads as a file path; there is no such file.
    assert!(err.contains("validator.example/api"), "{err}");
}
