//! Spawns the real `lmnt-bridge serve` binary on a free loopback port.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running daemon process; killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    pub stderr_path: PathBuf,
}

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Daemon {
    /// Starts `serve` with `config` (TOML, without `[server] listen`, which is set here) and
    /// extra environment; waits until `/healthz` answers. Overload protection is off
    /// (`LMNT_BRIDGE_OVERLOAD_LATE_MS=0`) unless `env` sets it: a test machine busy with
    /// other tests runs frames late, and a refused call would fail a test about something
    /// else.
    pub fn start(lmnt_base_url: &str, config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_unsetting(lmnt_base_url, config, env, &[])
    }

    /// [`Daemon::start`], with the variables in `unset` removed from the child's environment
    /// (`RUST_LOG`, to run at the default log level).
    pub fn start_unsetting(
        lmnt_base_url: &str,
        config: &str,
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stderr_path = dir.path().join("daemon.log");
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_lmnt-bridge"));
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", &addr.to_string()])
            .env("LMNT_BASE_URL", lmnt_base_url)
            .env("LMNT_API_KEY", "test-key-e2e")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info,lmnt_bridge=debug")
            .env("LMNT_BRIDGE_OVERLOAD_LATE_MS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        for k in unset {
            command.env_remove(k);
        }
        let child = command.spawn().expect("spawn lmnt-bridge serve");
        let mut daemon = Daemon {
            child,
            addr,
            _dir: dir,
            stderr_path,
        };
        daemon.wait_healthy();
        daemon
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited early ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not listen within 20 s:\n{}", self.log());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size (`VmRSS`) in bytes, from `/proc/PID/status`; None once the process
    /// is gone.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    /// CPU time (user + system) the process has used so far, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the parenthesised command name come state, ppid, ...: utime and stime are
        // the 12th and 13th of those fields (proc(5) numbers them 14 and 15).
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ticks = field(11) + field(12);
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// File descriptors the process holds now (sockets included), from `/proc/PID/fd`.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// SIGKILL, as a crash: nothing is cleaned up. Waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
