//! # qm-testkit: the test harness of every Quartermaster crate
//!
//! Real `qm-node` processes on loopback for the integration tests of the
//! replica, the client library, the `qm` command line and the
//! fault-injection suite, plus in-process fake replicas for the few
//! situations a real replica cannot be made to produce on demand. Nothing
//! here is in a production binary: the crate is `publish = false` and every
//! crate uses it as a dev-dependency, except `qm-jepsen`, which is a harness
//! itself.
//!
//! ```text
//!  test ──▶ binaries::node_binary() (built by `cargo build --workspace --bins`)
//!       ──▶ LocalCluster / TestCluster / AgentCluster ──spawn──▶ qm-node, qm agent, qm watch (127.0.0.1, free ports)
//!       ◀── Drop / watchdog: kill exactly the pids started here
//! ```
//!
//! # Layout
//!
//! * [`binaries`]: where `qm-node` and `qm` are.
//! * [`local_cluster`]: [`LocalCluster`], replicas laid out at given
//!   addresses (or proxies), started, killed, paused, restarted one by one.
//! * [`test_cluster`]: [`TestCluster`], a three-replica cluster for client
//!   tests, a cluster shared by tests that only add to the table, time
//!   bounds, protocol fixtures.
//! * [`agent_cluster`]: a cluster with a short provider failure window, and
//!   `qm agent` / `qm watch` processes reading their output into lines.
//! * [`fake`]: [`fake::FakeCluster`], in-process fake replicas.
//! * [`rabbitmq`]: [`rabbitmq::Broker`], a real RabbitMQ node per test on
//!   its own ports and data, stopped, killed and restarted by pid.
//! * [`prometheus`]: Debian's Prometheus on a free port and its own data
//!   directory, scraping what a test points it at, killed by its child.
//! * [`table_view`]: a table as a replica serves it and as one in memory
//!   would, for comparing after a restore.
//! * [`services`]: installs RabbitMQ, Prometheus and the Python clients
//!   (`scripts/install-services.sh`) when a test needs them.

pub mod agent_cluster;
pub mod binaries;
pub mod fake;
pub mod local_cluster;
pub mod prometheus;
pub mod rabbitmq;
pub mod services;
pub mod table_view;
pub mod test_cluster;

pub use binaries::{cli_binary, node_binary};
pub use local_cluster::LocalCluster;
pub use test_cluster::TestCluster;
