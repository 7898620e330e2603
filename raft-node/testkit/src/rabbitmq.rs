//! [`Broker`]: a real RabbitMQ (Debian's `rabbitmq-server`) for one test,
//! on its own free ports, node name, cookie and data directory, with its
//! own `epmd`, so that it meets no other broker on the machine and leaves
//! nothing behind.
//!
//! The server script is run directly (`/usr/lib/rabbitmq/bin`, not the
//! `/usr/sbin` wrapper that switches to the `rabbitmq` user) in a process
//! group of its own; [`Broker::stop`] asks the Erlang VM to stop (SIGTERM to
//! the pid it wrote), [`Broker::kill`] kills the group, and dropping the
//! broker kills the group and the `epmd` started for it. Durable exchanges,
//! queues and persistent messages survive either, as on a real host.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::local_cluster::free_loopback_addr;
use crate::services::ensure_installed;

/// The server script, run as the current user.
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// A broker that has not finished starting by then has failed.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(90);
/// A broker asked to stop that is still running then is killed.
pub const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// What the broker logs once it accepts connections.
const STARTED_LINE: &str = "Server startup complete";
/// What the node logs when its Erlang distribution port was taken between
/// our picking it free and its binding it: any outgoing connection of any
/// process may get that ephemeral port meanwhile.
const DIST_PORT_TAKEN: &str = "dist_port_already_used";
/// Starts tried with a fresh distribution port after [`DIST_PORT_TAKEN`]
/// (or, at the first start, fresh client ports after [`LISTENER_PORT_TAKEN`]).
const DIST_PORT_ATTEMPTS: u32 = 3;
/// What the node logs when a client listener's port was taken between our
/// picking it free and its binding it (`eaddrinuse`), the same race.
const LISTENER_PORT_TAKEN: &str = "could_not_start_listener";

/// PEM files for the broker's TLS listener (`amqps://`).
pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One RabbitMQ node for one test.
pub struct Broker {
    dir: tempfile::TempDir,
    amqp_port: u16,
    /// The `amqps://` listener's port, when started with TLS.
    amqps_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    epmd: Child,
    server: Option<Child>,
    starts: u32,
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|port| port.parse().ok()).expect("host:port")
}

impl Broker {
    /// Installs RabbitMQ if missing, starts a node and waits until it
    /// accepts connections.
    pub fn start() -> anyhow::Result<Broker> {
        Broker::start_with(None)
    }

    /// [`Broker::start`], plus an `amqps://` listener with these files
    /// (clients are not asked for certificates).
    pub fn start_with(tls: Option<&BrokerTls>) -> anyhow::Result<Broker> {
        ensure_installed();
        let dir = tempfile::Builder::new().prefix("qm-rabbitmq-").tempdir()?;
        let epmd_port = port_of(&free_loopback_addr()?);
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string()])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        // Any user from any address of loopback; the tests connect as guest.
        let mut conf = "loopback_users = none\n".to_owned();
        let amqps_port = match tls {
            None => None,
            Some(tls) => {
                let port = port_of(&free_loopback_addr()?);
                conf.push_str(&format!(
                    "listeners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
                     ssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                    tls.ca.display(),
                    tls.cert.display(),
                    tls.key.display()
                ));
                Some(port)
            }
        };
        std::fs::write(dir.path().join("rabbitmq.conf"), conf)?;
        let mut broker = Broker {
            amqps_port,
            amqp_port: port_of(&free_loopback_addr()?),
            dist_port: port_of(&free_loopback_addr()?),
            epmd_port,
            epmd,
            server: None,
            starts: 0,
            dir,
        };
        broker.start_server()?;
        Ok(broker)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `amqps://guest:guest@127.0.0.1:<port>/%2f`, when started with TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.amqps_port.map(|port| format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
    }

    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    fn node_name(&self) -> String {
        format!("qmtest{}@localhost", self.amqp_port)
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("server-{start}.log"))
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.path().join("beam.pid")
    }

    /// The server's output so far (every start), for a failing test's message.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|start| std::fs::read_to_string(self.log_path(start)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts the node; if its distribution port was taken meanwhile (not
    /// a port clients use), again on a fresh one, a bounded number of times.
    /// At the first start, before any client knows its ports, a taken
    /// client port is picked afresh too; a restart keeps its ports.
    fn start_server(&mut self) -> anyhow::Result<()> {
        let first_start = self.starts == 0;
        let mut attempt = 1;
        loop {
            match self.start_server_once() {
                Err(_) if attempt < DIST_PORT_ATTEMPTS && self.last_log().contains(DIST_PORT_TAKEN) => {
                    attempt += 1;
                    self.dist_port = port_of(&free_loopback_addr()?);
                    eprintln!(
                        "rabbitmq: the distribution port was taken while starting; again on {}",
                        self.dist_port
                    );
                }
                Err(_) if first_start && attempt < DIST_PORT_ATTEMPTS && self.last_log().contains(LISTENER_PORT_TAKEN) => {
                    attempt += 1;
                    self.amqp_port = port_of(&free_loopback_addr()?);
                    if self.amqps_port.is_some() {
                        self.rewrite_amqps_port(port_of(&free_loopback_addr()?))?;
                    }
                    eprintln!("rabbitmq: a listener's port was taken while starting; again on {}", self.amqp_port);
                }
                result => return result,
            }
        }
    }

    /// Moves the `amqps://` listener to `port` in the node's configuration.
    fn rewrite_amqps_port(&mut self, port: u16) -> anyhow::Result<()> {
        let path = self.dir.path().join("rabbitmq.conf");
        let old = self.amqps_port.expect("a TLS listener");
        let conf = std::fs::read_to_string(&path)?.replace(
            &format!("listeners.ssl.default = 127.0.0.1:{old}\n"),
            &format!("listeners.ssl.default = 127.0.0.1:{port}\n"),
        );
        std::fs::write(&path, conf)?;
        self.amqps_port = Some(port);
        Ok(())
    }

    /// The output of the latest start.
    fn last_log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    fn start_server_once(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.server.is_none(), "the broker is already running");
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = File::create(&log_path)?;
        let dir = self.dir.path();
        let server = Command::new(RABBITMQ_SERVER)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", self.node_name())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", self.pid_path())
            .env("RABBITMQ_LOGS", "-")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        self.server = Some(server);
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            if std::fs::read_to_string(&log_path).unwrap_or_default().contains(STARTED_LINE) {
                return Ok(());
            }
            if let Some(status) = self.server.as_mut().and_then(|server| server.try_wait().ok().flatten()) {
                self.server = None;
                anyhow::bail!("rabbitmq-server exited with {status} while starting:\n{}", self.logs());
            }
            if Instant::now() > deadline {
                self.kill()?;
                anyhow::bail!("rabbitmq-server did not start within {BROKER_START_TIMEOUT:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node as an operator would (SIGTERM to the Erlang VM, which
    /// closes connections and flushes queues), killing it if it takes too long.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.server.is_none() {
            return Ok(());
        }
        if let Some(pid) = read_pid(&self.pid_path()) {
            signal(pid, libc::SIGTERM);
        }
        let server = self.server.as_mut().expect("checked above");
        let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
        while server.try_wait()?.is_none() {
            if Instant::now() > deadline {
                return self.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.server = None;
        Ok(())
    }

    /// SIGKILL to the node's process group: a crash.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            let group = i32::try_from(server.id())?;
            signal(-group, libc::SIGKILL);
            server.wait()?;
        }
        Ok(())
    }

    /// Starts the node again on the same ports and data (after `stop` or `kill`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.start_server()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects; a pid (or group) that is gone
    // gives ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, signal);
    }
}
