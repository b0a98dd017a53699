//! The HTTP API over real sockets on 127.0.0.1, in-process nodes with packets flowing:
//! `/stats` on its interval, `/metrics` (checked by promtool where installed), a thousand
//! concurrent requests, malformed and slow clients, and a screenshot of the page in headless
//! Chromium (where installed).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::mixnet::*;
use common::{http_get, wait_for};
use nym_mixnode::framing::{SizeTag, Version};

/// Frames that make `node` forward to `receiver`, with every fifth repeated (a replay drop).
fn traffic(node: &TestNode, receiver: &Receiver, count: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    for i in 0..count {
        let route = [node.hop(Duration::from_millis(1)), receiver.hop()];
        let bytes = packet(&route, SizeTag::Regular, format!("m{i}").as_bytes());
        let framed = frame(header(Version::V8, SizeTag::Regular), &bytes);
        wire.extend_from_slice(&framed);
        if i % 5 == 0 {
            wire.extend_from_slice(&framed);
        }
    }
    wire
}

/// Keep sending `wire` to `mix` in a loop (replays then drop every round) until stopped.
fn keep_sending(mix: SocketAddr, wire: Vec<u8>, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut s) = TcpStream::connect(mix) {
                let _ = s.write_all(&wire);
                rounds += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rounds
    })
}

fn api(node: &TestNode) -> SocketAddr {
    node.node().addresses.http_api
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path).expect("answer");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Send raw `bytes`, read the answer; the status, or None if the connection failed or reset.
fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(bytes).ok()?;
    let mut text = Vec::new();
    s.read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn tool(name: &str) -> bool {
    common::tool_present(name, "that check")
}

#[test]
fn stats_grow_on_their_interval_and_metrics_pass_promtool_while_packets_flow() {
    let receiver = Receiver::start();
    let node = TestNode::start(2, |c| c.http.stats_interval = Duration::from_millis(300));
    let addr = api(&node);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(node.mix, traffic(&node, &receiver, 100), stop.clone());

    let first = wait_for(Duration::from_secs(10), "dropped since startup > 0", || {
        let v = json(addr, "/stats");
        (v["packets_explicitly_dropped_since_startup"].as_u64()? > 0).then_some(v)
    });
    let later = wait_for(
        Duration::from_secs(10),
        "dropped since startup grows",
        || {
            let v = json(addr, "/stats");
            let before = first["packets_explicitly_dropped_since_startup"].as_u64()?;
            (v["packets_explicitly_dropped_since_startup"].as_u64()? > before).then_some(v)
        },
    );
    assert_ne!(later["update_time"], first["update_time"]);
    assert!(later["packets_received_since_startup"].as_u64().unwrap() > 0);
    assert!(later["packets_sent_since_startup"].as_u64().unwrap() > 0);
    for field in [
        "packets_received_since_last_update",
        "packets_sent_since_last_update",
        "packets_explicitly_dropped_since_last_update",
    ] {
        assert!(later[field].is_u64(), "{field}");
    }
    let hop = receiver.addr.to_string();
    let debug = wait_for(
        Duration::from_secs(10),
        "debug map has the next hop",
        || {
            let v = json(addr, "/stats?debug=true");
            (v["packets_sent_since_startup"][&hop].as_u64()? > 0).then_some(v)
        },
    );
    assert!(debug["packets_explicitly_dropped_since_startup"].is_object());
    assert!(debug["packets_received_since_startup"].is_u64());

    let metrics = wait_for(Duration::from_secs(10), "histograms fill", || {
        let (status, body) = http_get(addr, "/metrics")?;
        assert_eq!(status, 200);
        let has = |prefix: &str| {
            body.lines()
                .any(|l| l.starts_with(prefix) && !l.ends_with(" 0"))
        };
        (has("nym_mixnode_sphinx_processing_seconds_count{stage=\"unwrap\"}")
            && has("nym_mixnode_added_latency_seconds_count")
            && (has("nym_mixnode_packets_dropped_total{shard=\"0\",reason=\"replay\"}")
                || has("nym_mixnode_packets_dropped_total{shard=\"1\",reason=\"replay\"}")))
        .then_some(body)
    });
    stop.store(true, Ordering::Relaxed);
    assert!(sender.join().unwrap() > 0);
    if tool("promtool") {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &metrics).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "promtool check metrics < {}",
                file.path().display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(metrics.contains("# TYPE nym_mixnode_handoff_batches_total counter"));
    // Where this process may count a kernel tracepoint, so may the node's shards.
    if nym_mixnode::shard::syscalls::SyscallCounter::for_this_thread().is_some() {
        let calls: Vec<u64> = metrics
            .lines()
            .filter(|l| l.starts_with("nym_mixnode_shard_syscalls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(
            !calls.is_empty() && calls.iter().all(|&n| n > 0),
            "each shard's system calls: {calls:?}"
        );
    }
    let health = json(addr, "/health");
    assert_eq!(health["status"], "up");
    assert!(health["uptime_s"].is_u64());
    let (status, body) = http_get(addr, "/no/such/route").unwrap();
    assert_eq!(status, 404);
    assert!(body.starts_with("not found"));
}

#[test]
fn a_thousand_concurrent_malformed_and_slow_clients_are_bounded_while_packets_flow() {
    let receiver = Receiver::start();
    let node = TestNode::start(2, |c| {
        c.http.concurrent_requests_max = 16;
        c.http.request_timeout = Duration::from_millis(800);
        // Every client here comes from 127.0.0.1: this test is about the workers' bound.
        c.http.connections_per_ip_max = 2000;
    });
    let addr = api(&node);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(node.mix, traffic(&node, &receiver, 60), stop.clone());

    // Slow clients: open and dribble a byte every 100 ms; they must get 408 after the timeout.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut answer = Vec::new();
                // Whether the server answered (or closed) while the client was still sending:
                // the head would take 20 s at this pace, and the client gives up after 5 s.
                let mut cut_off = false;
                for byte in b"GET /stats HTTP/1.1\r\nX-Slow: "
                    .iter()
                    .chain([b'a'; 200].iter())
                {
                    if s.write_all(&[*byte]).is_err() {
                        cut_off = true;
                        break;
                    }
                    let mut buf = [0u8; 256];
                    match s.read(&mut buf) {
                        Ok(0) => {
                            cut_off = true;
                            break;
                        }
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                    if !answer.is_empty() {
                        cut_off = true;
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(5) {
                        break;
                    }
                }
                let _ = s.read_to_end(&mut answer);
                (String::from_utf8_lossy(&answer).into_owned(), cut_off)
            })
        })
        .collect();

    // Malformed requests, each with the code it must get.
    let bad: &[(&[u8], u16)] = &[
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"POST /stats HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405),
        (b"GET /stats HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 413),
        (b"\x00\x01\x02\x03\r\n\r\n", 400),
    ];
    for (bytes, code) in bad {
        assert_eq!(raw(addr, bytes, Duration::from_secs(3)), Some(*code));
    }
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
    assert_eq!(
        raw(addr, long.as_bytes(), Duration::from_secs(3)),
        Some(414)
    );
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(100));
    assert_eq!(
        raw(addr, many.as_bytes(), Duration::from_secs(3)),
        Some(431)
    );
    // Cut off mid-head, and silent: neither holds a worker for long.
    assert_eq!(raw(addr, b"GET / HTT", Duration::from_secs(3)), Some(408));

    // A thousand requests at once: 20 threads, each opening 50 connections before reading.
    let start = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut streams = Vec::new();
                for _ in 0..50 {
                    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(20));
                    if let Ok(mut s) = stream {
                        let _ = s.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
                        streams.push(Some(s));
                    } else {
                        streams.push(None);
                    }
                }
                let mut codes = Vec::new();
                for s in streams {
                    let Some(mut s) = s else {
                        codes.push(2); // never connected
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut text = Vec::new();
                    let code = match s.read_to_end(&mut text) {
                        Ok(_) => String::from_utf8_lossy(&text)
                            .split_whitespace()
                            .nth(1)
                            .and_then(|c| c.parse::<u16>().ok())
                            .unwrap_or(0),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 1, // hung
                        Err(_) => 0,                                               // reset
                    };
                    codes.push(code);
                }
                codes
            })
        })
        .collect();
    let codes: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let elapsed = start.elapsed();
    let count = |c: u16| codes.iter().filter(|x| **x == c).count();
    println!(
        "1000 concurrent: {} ok, {} busy (503), {} reset, {} hung, {} not connected, in {elapsed:?}",
        count(200),
        count(503),
        count(0),
        count(1),
        count(2)
    );
    assert_eq!(codes.len(), 1000);
    assert_eq!(count(1), 0, "no request hangs");
    // A reset is no answer: every connection gets 200 or a 503 it can read.
    assert_eq!(count(200) + count(503), 1000, "{codes:?}");
    assert!(count(200) >= 16, "the workers answered some");

    for handle in slow {
        let (answer, cut_off) = handle.join().unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "slow client got: {answer:?}"
        );
        assert!(
            cut_off,
            "the server cut the slow client off while it was still sending"
        );
    }
    // Still answering, and the data plane still forwards.
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);
    let metrics = http_get(addr, "/metrics").unwrap().1;
    assert!(metrics.contains("nym_mixnode_http_requests_total{code=\"408\"}"));
    // The traffic repeats, so after its first round it is counted as replays: the data plane
    // still takes in and checks every packet.
    assert!(node.totals().0.forwarded > 0);
    let received_before = node.totals().0.received;
    eventually(Duration::from_secs(10), "packets keep flowing", || {
        node.totals().0.received > received_before
    });
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
}

/// Pixels within a small tolerance of `rgb`, and the total.
fn pixels_of_colour(png_file: &Path, rgb: [u8; 3]) -> (usize, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(png_file).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    assert!(channels >= 3, "a colour screenshot");
    let pixels: Vec<&[u8]> = bytes.chunks(channels).collect();
    let matching = pixels
        .iter()
        .filter(|p| {
            p[..3]
                .iter()
                .zip(rgb.iter())
                .all(|(a, b)| a.abs_diff(*b) <= 12)
        })
        .count();
    (matching, pixels.len())
}

/// The text of the element with `id` in a dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open_end = start + dom[start..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(&dom[open_end..close])
}

#[test]
fn the_page_renders_in_headless_chromium() {
    let receiver = Receiver::start();
    let node = TestNode::start(2, |_| {});
    let addr = api(&node);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(node.mix, traffic(&node, &receiver, 30), stop.clone());
    let (status, html) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(html.contains("<canvas"));
    // Let the history gather a few points for the chart.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let found = ["chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok());
    let Some(browser) = found
        .or_else(|| common::tool_present("chromium", "the screenshot check").then_some("chromium"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("page.png");
    let chromium = |extra: &[String]| {
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--virtual-time-budget=3000",
                "--window-size=1200,900",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .args(extra)
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap()
    };
    // The DOM after the page's script ran: the figures are filled in, one row per shard.
    let dom = chromium(&["--dump-dom".to_string()]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let received: u64 = element_text(&dom, "t_recv")
        .map(|t| t.replace(',', ""))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no received total in the page:\n{dom}"));
    assert!(received > 0, "the page shows the packets received");
    for legend in ["shard 0 received", "shard 1 received", "forwarded (all)"] {
        assert!(dom.contains(legend), "{legend} missing from the legend");
    }
    let shard_rows = dom
        .split("id=\"shards\"")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .map(|table| table.matches("<tr>").count())
        .unwrap_or(0);
    assert_eq!(shard_rows, 3, "a header row and one row per shard");
    // The screenshot: both shards' lines are drawn on the chart, not only their legend
    // swatches (10 x 10 pixels each).
    let out = chromium(&[format!("--screenshot={}", shot.display())]);
    assert!(
        shot.exists(),
        "chromium wrote no screenshot:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Ok(keep) = std::env::var("HTTP_API_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }
    for (name, rgb) in [
        ("shard 0", [0x2f, 0x6f, 0xdf]),
        ("shard 1", [0xe0, 0x82, 0x2b]),
    ] {
        let (matching, total) = pixels_of_colour(&shot, rgb);
        println!("screenshot: {matching} of {total} pixels in {name}'s colour");
        assert!(
            matching > 400,
            "{name}'s line is not drawn: {matching} of {total} pixels in its colour"
        );
    }
}

#[test]
fn health_answers_200_while_slow_clients_hold_every_worker() {
    let node = TestNode::start(1, |c| {
        c.http.concurrent_requests_max = 4;
        c.http.request_timeout = Duration::from_secs(10);
    });
    let api = api(&node);
    // Two thousand clients that connect and send half a request line, then nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut opened = 0usize;
            while !stop.load(Ordering::Relaxed) && opened < 2000 {
                if let Ok(mut s) = TcpStream::connect_timeout(&api, Duration::from_secs(1)) {
                    let _ = s.write_all(b"GET /sta");
                    held.push(s);
                    opened += 1;
                }
                if opened.is_multiple_of(100) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // Every worker and queue slot is taken: other paths are answered busy.
    let other = http_get(api, "/stats").map(|(status, _)| status);
    let mut answers = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let answer = http_get(api, "/health");
        answers.push((answer.map(|(status, _)| status), started.elapsed()));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let opened = flood.join().unwrap();
    eprintln!("{opened} slow clients; /health answers: {answers:?}");
    assert!(opened >= 500, "the flood opened {opened} connections");
    for (status, took) in &answers {
        assert_eq!(*status, Some(200), "/health under the flood: {answers:?}");
        assert!(*took < Duration::from_secs(2), "/health took {took:?}");
    }
    assert_eq!(other, Some(503), "the workers were all held by the flood");
}

/// A connection to `to` from the loopback address `from` (any of 127.0.0.0/8).
fn connect_from(from: [u8; 4], to: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((from, 0)).into()).ok()?;
    socket
        .connect_timeout(&to.into(), Duration::from_secs(1))
        .ok()?;
    Some(socket.into())
}

/// GET `path` from the loopback address `from`: the status and body, if an answer came.
fn get_body_from(from: [u8; 4], to: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = connect_from(from, to)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// GET `path` from the loopback address `from`: the status, if an answer came.
fn get_from(from: [u8; 4], to: SocketAddr, path: &str) -> Option<u16> {
    get_body_from(from, to, path).map(|(status, _)| status)
}

/// The value of an unlabelled metric in a /metrics text.
fn plain_metric(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Slow clients that send half a request line and then nothing, `per_address` from each of
/// `addresses`; held until the returned flag is set.
fn slow_flood(
    api: SocketAddr,
    addresses: Vec<[u8; 4]>,
    per_address: usize,
) -> (Arc<AtomicBool>, JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let flood = std::thread::spawn(move || {
        let mut held = Vec::new();
        for from in addresses {
            for _ in 0..per_address {
                if let Some(mut s) = connect_from(from, api) {
                    let _ = s.write_all(b"GET /sta");
                    held.push(s);
                }
            }
        }
        let opened = held.len();
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        opened
    });
    (stop, flood)
}

#[test]
fn slow_clients_of_one_address_are_capped_and_leave_the_workers_to_others() {
    let node = TestNode::start(1, |c| {
        c.http.concurrent_requests_max = 4;
        c.http.connections_per_ip_max = 2;
        c.http.request_timeout = Duration::from_secs(20);
    });
    let api = api(&node);
    let (stop, flood) = slow_flood(api, vec![[127, 0, 0, 1]], 500);
    std::thread::sleep(Duration::from_millis(800));
    // Another address gets the workers the flood may not take.
    let mut others = Vec::new();
    for _ in 0..10 {
        others.push(get_from([127, 0, 0, 2], api, "/stats"));
    }
    // The flooding address's own health checks are answered by the accept thread.
    let health = get_from([127, 0, 0, 1], api, "/health");
    // The accept thread takes the backlog a round at a time: wait for it to see them all.
    let started = Instant::now();
    let refused = loop {
        let metrics = get_body_from([127, 0, 0, 3], api, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let refused = plain_metric(
            &metrics,
            "nym_mixnode_http_connections_refused_per_ip_total",
        );
        if refused >= Some(400) || started.elapsed() > Duration::from_secs(10) {
            break refused;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::Relaxed);
    let opened = flood.join().unwrap();
    eprintln!("{opened} slow clients from 127.0.0.1; /stats from 127.0.0.2: {others:?}");
    assert!(opened >= 400, "the flood opened {opened} connections");
    assert!(others.iter().all(|s| *s == Some(200)), "{others:?}");
    assert_eq!(health, Some(200));
    assert!(refused >= Some(400), "refused per address: {refused:?}");
}

#[test]
fn slow_clients_of_many_addresses_are_evicted_for_new_requests() {
    let node = TestNode::start(1, |c| {
        c.http.concurrent_requests_max = 4;
        c.http.connections_per_ip_max = 2;
        c.http.request_timeout = Duration::from_secs(20);
    });
    let api = api(&node);
    // 40 slow clients from 20 addresses: every worker and queue slot, and more.
    let addresses = (10..30u8).map(|last| [127, 0, 0, last]).collect();
    let (stop, flood) = slow_flood(api, addresses, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let mut answers = Vec::new();
    let served = loop {
        let answer = get_from([127, 0, 0, 2], api, "/stats");
        answers.push(answer);
        if answer == Some(200) || started.elapsed() > Duration::from_secs(8) {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let metrics = get_body_from([127, 0, 0, 3], api, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let opened = flood.join().unwrap();
    eprintln!("{opened} slow clients; /stats answers {answers:?}, served after {served:?}");
    assert_eq!(opened, 40);
    assert_eq!(answers.last(), Some(&Some(200)), "{answers:?}");
    let evicted = plain_metric(&metrics, "nym_mixnode_http_connections_evicted_total");
    assert!(evicted >= Some(1), "evicted: {evicted:?}");
}
