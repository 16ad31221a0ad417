//! Starts Debian's `haproxy` with the shipped `deploy/haproxy/haproxy.cfg`, its listener and
//! its node addresses rewritten to the test's loopback ports, plus a stats listener the test
//! reads server states from.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::free_port;

/// The shipped configuration.
pub const SHIPPED: &str = include_str!("../../deploy/haproxy/haproxy.cfg");
/// The listener the shipped configuration binds.
const SHIPPED_BIND: &str = "bind 127.0.0.1:8080";

/// A running HAProxy; killed on drop.
pub struct Haproxy {
    child: Child,
    /// `127.0.0.1:PORT`: where calls are placed.
    pub addr: SocketAddr,
    stats: SocketAddr,
    _dir: tempfile::TempDir,
    log_path: std::path::PathBuf,
}

impl Haproxy {
    /// Starts HAProxy in front of `nodes` (`(node_id, address)`, in the order of the shipped
    /// file's servers, whose addresses are `127.0.0.1:8081`, `:8082`, …) and waits until it
    /// has checked every node of `new_calls` ready.
    pub fn start(nodes: &[(&str, SocketAddr)]) -> Haproxy {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        assert!(
            SHIPPED.contains(SHIPPED_BIND),
            "the shipped bind line moved"
        );
        let mut config = SHIPPED.replace(SHIPPED_BIND, &format!("bind {addr}"));
        for (i, (node, node_addr)) in nodes.iter().enumerate() {
            let shipped_addr = format!("127.0.0.1:{}", 8081 + i);
            assert!(
                config.contains(&format!("server {node} {shipped_addr}"))
                    && config.contains(&format!("backend node_{node}\n")),
                "the shipped configuration has no server and backend for node {node}"
            );
            config = config.replace(&shipped_addr, &node_addr.to_string());
        }
        config.push_str(&format!(
            "\nfrontend test_stats\n    bind {stats}\n    stats enable\n    stats uri /stats\n"
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log_path = dir.path().join("haproxy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy: install Debian's haproxy package (scripts/install-deps.sh)");
        let haproxy = Haproxy {
            child,
            addr,
            stats,
            _dir: dir,
            log_path,
        };
        let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
        haproxy.wait_states(&names, "UP");
        haproxy
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// HAProxy's own output (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The health-check status (`UP`, `DOWN`, …) of each server of `new_calls`.
    pub fn new_calls_states(&self) -> Vec<(String, String)> {
        let Ok(reply) = blocking_get(self.stats, "/stats;csv") else {
            return Vec::new();
        };
        // CSV: pxname,svname,...,status (the 18th field).
        reply
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                (fields.first() == Some(&"new_calls") && fields.len() > 17)
                    .then(|| (fields[1].to_owned(), fields[17].to_owned()))
            })
            .collect()
    }

    /// Waits (20 s guard) until each server of `new_calls` named in `nodes` has `state`.
    pub fn wait_states(&self, nodes: &[&str], state: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let states = self.new_calls_states();
            let all = nodes
                .iter()
                .all(|n| states.iter().any(|(s, st)| s == n && st == state));
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy's new_calls servers {nodes:?} never all {state}: {states:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET, for the stats page (the tests' async helpers need a runtime).
fn blocking_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}
