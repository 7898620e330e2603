use std::collections::BTreeMap;
use std::io::Write as _;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use qm_state_machine::{PlacementPolicy, ResourceRequest};
use serde_json::Number;

use super::*;
use qm_client::proto::api;

/// The protocol's `resource_request` example, verbatim.
const PROTOCOL_EXAMPLE: &str = include_str!("../../../state-machine/tests/fixtures/resource_request.json");

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("qm").chain(args.iter().copied())).unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

fn parse_error(args: &[&str]) -> ErrorKind {
    Cli::try_parse_from(std::iter::once("qm").chain(args.iter().copied()))
        .unwrap_err()
        .kind()
}

fn allocate_args(args: &[&str]) -> AllocateArgs {
    match parse(&[&["allocate"], args].concat()).command {
        Command::Allocate(args) => args,
        other => panic!("not allocate: {other:?}"),
    }
}

fn request_from_stdin(args: &[&str], stdin: &str) -> Result<ResourceRequest, CliError> {
    allocate_args(args).to_request(&mut stdin.as_bytes())
}

// --- the command line's shape

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn global_options_have_defaults() {
    let cli = parse(&["state"]);

    assert_eq!(vec!["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"], cli.endpoints);
    assert_eq!(OutputFormat::Table, cli.output);
    assert_eq!(ClientConfig::default(), cli.client_config(), "one set of defaults");
}

#[test]
fn global_options_go_anywhere_and_shape_the_client() {
    let cli = parse(&[
        "get",
        "550e8400-e29b-41d4-a716-446655440000",
        "--endpoints",
        "10.0.0.1:1, 10.0.0.2:2",
        "--output",
        "json",
        "--timeout-ms",
        "500",
    ]);

    assert_eq!(OutputFormat::Json, cli.output);
    let config = cli.client_config();
    assert_eq!(vec!["10.0.0.1:1", "10.0.0.2:2"], config.endpoints);
    assert_eq!(
        (500, 500),
        (config.request_timeout_ms, config.attempt_timeout_ms),
        "an attempt never outlasts the call"
    );
    assert_eq!(Ok(()), config.validate());
}

#[test]
fn every_command_parses() {
    let id = "550e8400-e29b-41d4-a716-446655440000";
    let lines: Vec<Vec<&str>> = vec![
        vec!["cluster", "status"],
        vec!["cluster", "status", "--verbose"],
        vec!["cluster", "add", "--id", "4", "--addr", "127.0.0.1:7104", "--learner-only"],
        vec!["cluster", "remove", "--id", "4"],
        vec!["provider", "register", "--file", "node_1.json"],
        vec!["provider", "list", "--stale"],
        vec!["provider", "list", "--all"],
        vec!["provider", "deregister", "node_1"],
        vec!["allocate", "--file", "-"],
        vec!["allocate", "--requester", "agent_123", "--cpu-cores", "2"],
        vec!["release", id],
        vec!["release", "--namespace", "team_a"],
        vec!["release", "--namespace", "team_a", "--requester", "agent_123"],
        vec!["release", "--provider", "node_1"],
        vec!["renew", id],
        vec!["get", id, "--stale"],
        vec![
            "list",
            "--namespace",
            "team_a",
            "--requester",
            "agent_123",
            "--provider",
            "node_1",
            "--state",
            "monitoring",
        ],
        vec!["watch", "--from", "42", "--namespace", "team_a"],
        vec!["state"],
    ];
    for line in lines {
        parse(&line);
    }
}

#[test]
fn every_command_has_help() {
    let lines: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["cluster", "--help"],
        vec!["cluster", "status", "--help"],
        vec!["cluster", "add", "--help"],
        vec!["cluster", "remove", "--help"],
        vec!["provider", "--help"],
        vec!["provider", "register", "--help"],
        vec!["provider", "list", "--help"],
        vec!["provider", "deregister", "--help"],
        vec!["allocate", "--help"],
        vec!["release", "--help"],
        vec!["renew", "--help"],
        vec!["get", "--help"],
        vec!["list", "--help"],
        vec!["watch", "--help"],
        vec!["state", "--help"],
    ];
    for line in lines {
        assert_eq!(ErrorKind::DisplayHelp, parse_error(&line), "{line:?}");
    }
}

#[test]
fn misuse_is_a_usage_error() {
    assert_eq!(
        ErrorKind::MissingRequiredArgument,
        parse_error(&["allocate", "--cpu-cores", "2"]),
        "no requester and no file"
    );
    assert_eq!(
        ErrorKind::ArgumentConflict,
        parse_error(&["allocate", "--file", "r.json", "--cpu-cores", "2"])
    );
    assert_eq!(
        ErrorKind::ValueValidation,
        parse_error(&["allocate", "--requester", "a", "--kind", "gpu"])
    );
    assert_eq!(
        ErrorKind::ValueValidation,
        parse_error(&["allocate", "--requester", "a", "--kind", "gpu=two"])
    );
    assert_eq!(ErrorKind::InvalidValue, parse_error(&["list", "--state", "sleeping"]));
    assert_eq!(
        ErrorKind::MissingRequiredArgument,
        parse_error(&["list", "--requester", "agent_123"]),
        "requester ids are per namespace"
    );
    assert_eq!(ErrorKind::MissingRequiredArgument, parse_error(&["release"]), "an id or a filter");
    assert_eq!(
        ErrorKind::ArgumentConflict,
        parse_error(&["release", "550e8400-e29b-41d4-a716-446655440000", "--provider", "node_1"])
    );
    assert_eq!(
        ErrorKind::MissingRequiredArgument,
        parse_error(&["release", "--requester", "agent_123"]),
        "requester ids are per namespace"
    );
    assert_eq!(ErrorKind::InvalidValue, parse_error(&["state", "--output", "yaml"]));
    assert_eq!(ErrorKind::InvalidSubcommand, parse_error(&["benchmark"]));
}

// --- allocate: the protocol's JSON

#[test]
fn the_protocol_example_parses_from_stdin_exactly() {
    let request = request_from_stdin(&["--file", "-"], PROTOCOL_EXAMPLE).unwrap();

    assert_eq!(ResourceRequest::from_json(PROTOCOL_EXAMPLE).unwrap(), request);
    let validated = request.validate().unwrap();
    assert_eq!("agent_123", validated.requester_id);
    assert_eq!(3, validated.requirements.len());
    assert_eq!(Some(1_711_017_000_000), validated.deadline_ms.get());
}

#[test]
fn the_protocol_example_parses_from_a_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(PROTOCOL_EXAMPLE.as_bytes()).unwrap();

    let request = request_from_stdin(&["--file", file.path().to_str().unwrap(), "--wait"], "").unwrap();

    assert_eq!(ResourceRequest::from_json(PROTOCOL_EXAMPLE).unwrap(), request);
}

#[test]
fn a_missing_file_is_bad_input() {
    let error = request_from_stdin(&["--file", "/nonexistent/request.json"], "").unwrap_err();

    assert_eq!(2, error.exit_code());
    assert!(error.to_string().starts_with("cannot read /nonexistent/request.json: "), "{error}");
}

#[test]
fn malformed_json_is_bad_input_naming_the_document() {
    let error = request_from_stdin(&["--file", "-"], r#"{"requester_id": "a", "priority": }"#).unwrap_err();

    assert_eq!(2, error.exit_code());
    assert!(error.to_string().starts_with("invalid resource_request: "), "{error}");
}

#[test]
fn a_negative_quantity_in_the_document_names_the_field() {
    let document = PROTOCOL_EXAMPLE.replace("\"cpu_cores\": 2", "\"cpu_cores\": -1");
    let request = request_from_stdin(&["--file", "-"], &document).unwrap();

    let error = CliError::from(request.validate().unwrap_err());

    assert_eq!(
        "invalid resource_requirements.cpu_cores: must be positive, got -1",
        error.to_string()
    );
    assert_eq!(2, error.exit_code());
}

// --- allocate: flags

#[test]
fn flags_build_the_same_request_as_the_protocol_example() {
    let request = request_from_stdin(
        &[
            "--request-id",
            "550e8400-e29b-41d4-a716-446655440000",
            "--requester",
            "agent_123",
            "--cpu-cores",
            "2",
            "--memory-gb",
            "4",
            "--storage-gb",
            "100",
            "--priority",
            "1",
            "--deadline",
            "2024-03-21T10:30:00Z",
        ],
        "",
    )
    .unwrap();

    assert_eq!(ResourceRequest::from_json(PROTOCOL_EXAMPLE).unwrap(), request);
}

#[test]
fn flags_cover_the_extensions() {
    let request = request_from_stdin(
        &[
            "--requester",
            "agent_123",
            "--gpu",
            "1",
            "--kind",
            "fpga=2",
            "--kind",
            "nic = 1",
            "--lease-ttl",
            "30000",
            "--namespace",
            "team_a",
            "--provider",
            "node_1",
            "--label",
            "zone=a",
            "--placement",
            "spread",
            "--movable",
            "--on-preemption",
            "release",
        ],
        "",
    )
    .unwrap();

    let kinds = BTreeMap::from([
        ("fpga".to_owned(), Number::from(2)),
        ("gpu".to_owned(), Number::from(1)),
        ("nic".to_owned(), Number::from(1)),
    ]);
    assert_eq!(Some(kinds), request.resource_requirements);
    assert_eq!(
        (None, Some(Number::from(0))),
        (request.request_id.clone(), request.priority.clone()),
        "no id yet: the client generates it"
    );
    assert_eq!((Some("team_a"), Some(30_000)), (request.namespace.as_deref(), request.lease_ttl_ms));
    let constraints = request.constraints.clone().unwrap();
    assert_eq!(
        (Some("node_1"), Some("a")),
        (
            constraints.provider_id.as_deref(),
            constraints.labels.get("zone").map(String::as_str)
        )
    );
    assert_eq!(Some(PlacementPolicy::Spread), request.placement);
    assert_eq!(
        (Some(true), Some(qm_state_machine::OnPreemption::Release)),
        (request.movable, request.on_preemption)
    );
    let mut with_id = request;
    with_id.request_id = Some("550e8400-e29b-41d4-a716-446655440000".into());
    assert_eq!(Ok(()), with_id.validate().map(|_| ()));
}

#[test]
fn a_negative_flag_reaches_validation_and_names_the_field() {
    let mut request = request_from_stdin(&["--requester", "agent_123", "--cpu-cores", "-1"], "").unwrap();
    request.request_id = Some("550e8400-e29b-41d4-a716-446655440000".into());

    let error = CliError::from(request.validate().unwrap_err());

    assert_eq!(
        "invalid resource_requirements.cpu_cores: must be positive, got -1",
        error.to_string()
    );
    assert_eq!(2, error.exit_code());
}

#[test]
fn a_kind_given_twice_is_bad_input() {
    let error = request_from_stdin(&["--requester", "a", "--cpu-cores", "2", "--kind", "cpu_cores=3"], "").unwrap_err();

    assert_eq!("invalid resource_requirements.cpu_cores: is given twice", error.to_string());
}

// --- other commands

#[test]
fn list_flags_become_a_list_request() {
    let Command::List(args) = parse(&[
        "list",
        "--namespace",
        "team_a",
        "--requester",
        "agent_123",
        "--state",
        "monitoring",
        "--limit",
        "10",
    ])
    .command
    else {
        panic!("not list")
    };

    let request = args.to_request();

    assert_eq!(
        ("team_a", "agent_123", api::RequestState::Monitoring, 10, false),
        (
            request.namespace.as_str(),
            request.requester_id.as_str(),
            request.state(),
            request.limit,
            request.stale
        )
    );
}

#[test]
fn the_registration_document_parses() {
    let document = r#"{"provider_id": "node_1", "labels": {"zone": "a"},
        "resources": [{"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1, "labels": {"numa": "0"}}]}"#;

    let registration = provider::parse_registration(document).unwrap().validate().unwrap();

    assert_eq!(("node_1", 1), (registration.provider_id.as_str(), registration.resources.len()));
    assert_eq!(Some(qm_state_machine::Sharing::Exclusive), registration.resources[0].sharing);
}

#[test]
fn a_bad_registration_document_names_it() {
    let error = CliError::from(provider::parse_registration(r#"{"provider_id": "node_1"}"#).unwrap_err());

    assert_eq!(2, error.exit_code());
    assert!(
        error.to_string().starts_with("invalid registration: missing field `resources`"),
        "{error}"
    );
}

#[test]
fn failures_that_are_not_bad_input_exit_1() {
    let unknown = CliError::from(qm_client::Error::Unknown {
        request_id: Some("r".into()),
        last_cause: "no answer within 2000 ms".into(),
    });
    let unavailable = CliError::from(qm_client::Error::Unavailable {
        attempts: 4,
        last_cause: "connection refused".into(),
    });

    assert_eq!((1, 1), (unknown.exit_code(), unavailable.exit_code()));
    assert_eq!(
        "outcome unknown for request r: the write may or may not have taken effect; last cause: no answer within 2000 ms",
        unknown.to_string()
    );
}

#[test]
fn cluster_status_json_has_the_documented_shape() {
    let status = qm_client::proto::api::ClusterStatusReply {
        node_id: 2,
        leader_id: Some(1),
        leader_addr: "127.0.0.1:7101".into(),
        term: 3,
        commit_index: 40,
        applied_index: 39,
        members: vec![qm_client::proto::api::Member {
            id: 1,
            addr: "127.0.0.1:7101".into(),
            role: "leader".into(),
        }],
        last_log_index: 40,
        snapshot_index: 0,
        cluster_id: "0123456789abcdef".into(),
        log_format_version: 1,
        table_format_version: 6,
        peers: vec![qm_client::proto::api::PeerAnnouncement {
            id: 3,
            cluster_id: "fedcba9876543210".into(),
            log_format_version: 3,
            table_format_version: 8,
            refused: "refused by this replica: format versions too far apart".into(),
        }],
    };

    let json = serde_json::to_value(cluster::ClusterStatusJson::from(&status)).unwrap();

    let expected = serde_json::json!({
        "leader_id": 1, "term": 3, "commit_index": 40, "applied_index": 39,
        "members": [{"id": 1, "addr": "127.0.0.1:7101", "role": "leader"}],
        "cluster_id": "0123456789abcdef", "log_format_version": 1, "table_format_version": 6,
        "peers": [{"id": 3, "cluster_id": "fedcba9876543210", "log_format_version": 3, "table_format_version": 8,
                   "refused": "refused by this replica: format versions too far apart"}]
    });
    assert_eq!(expected, json);

    let mut verbose = cluster::ClusterStatusJson::from(&status);
    verbose.client = Some(vec![cluster::KnownReplicaJson {
        addr: "127.0.0.1:7101".into(),
        seed: true,
        member: true,
        leader: true,
        unreachable: false,
    }]);
    assert_eq!(
        serde_json::json!([{"addr": "127.0.0.1:7101", "seed": true, "member": true, "leader": true, "unreachable": false}]),
        serde_json::to_value(verbose).unwrap()["client"],
        "--verbose adds the client's view"
    );
}

#[test]
fn the_membership_refresh_interval_is_a_flag() {
    assert_eq!(
        qm_client::config::MEMBERSHIP_REFRESH_INTERVAL_MS,
        parse(&["cluster", "status"]).client_config().membership_refresh_interval_ms
    );
    let config = parse(&["--membership-refresh-interval-ms", "500", "watch"]).client_config();
    assert_eq!(500, config.membership_refresh_interval_ms);
}

#[test]
fn tls_flags_make_the_client_config_tls() {
    assert_eq!(None, parse(&["cluster", "status"]).client_config().tls);
    let cli = parse(&[
        "--tls-cert",
        "c/admin.crt",
        "--tls-key",
        "c/admin.key",
        "--tls-ca",
        "c/ca.crt",
        "cluster",
        "status",
    ]);
    assert_eq!(Some(TlsConfig::in_dir(std::path::Path::new("c"), "admin")), cli.client_config().tls);
    let partial = parse(&["--tls-cert", "c/admin.crt", "cluster", "status"]).client_config();
    assert_eq!("tls.ca", partial.validate().unwrap_err().field, "a missing file is named");
}

#[test]
fn a_leaving_provider_says_so_in_the_status_column() {
    let info = |status: &str, scheduling: &str, leaving| api::ProviderInfo {
        status: status.into(),
        scheduling: scheduling.into(),
        leaving,
        ..Default::default()
    };
    assert_eq!("active", crate::provider::status_cell(&info("active", "", false)));
    assert_eq!("failed, leaving", crate::provider::status_cell(&info("failed", "open", true)));
    assert_eq!(
        "failed, leaving, cordoned",
        crate::provider::status_cell(&info("failed", "cordoned", true))
    );
}

#[test]
fn policy_set_reads_every_capability_and_binding() {
    use qm_state_machine::policy::{Binding, Capability, PolicySpec, ProviderScope};
    let Command::Policy(crate::policy::PolicyCommand::Set(args)) = parse(&[
        "policy",
        "set",
        "team-a",
        "--kinds",
        "cpu_cores,gpu",
        "--provider-label",
        "zone=a",
        "--max-per-request",
        "cpu_cores=4",
        "--max-held",
        "gpu=2",
        "--priority-max",
        "-1",
        "--preempt",
        "no",
        "--bind-cert",
        "alice",
        "--bind-role",
        "resource_consumer:team-a",
    ])
    .command
    else {
        panic!("not policy set");
    };
    let expected = PolicySpec {
        name: "team-a".into(),
        capability: Capability {
            kinds: Some(["cpu_cores".to_owned(), "gpu".to_owned()].into()),
            providers: ProviderScope {
                ids: None,
                labels: [("zone".to_owned(), "a".to_owned())].into(),
            },
            max_per_request: [("cpu_cores".to_owned(), 4)].into(),
            max_held: [("gpu".to_owned(), 2)].into(),
            priority_max: Some(-1),
            may_preempt: false,
        },
        bindings: [
            Binding::CertName("alice".into()),
            Binding::Role {
                role: "resource_consumer".into(),
                namespace: Some("team-a".into()),
            },
        ]
        .into(),
    };
    assert_eq!(expected, crate::policy::spec_from_args(&args).unwrap());
    assert_eq!(ErrorKind::InvalidValue, parse_error(&["policy", "set", "p", "--preempt", "maybe"]));
    assert_eq!(
        ErrorKind::MissingRequiredArgument,
        parse_error(&["policy", "bind", "p"]),
        "bind needs --cert-name or --role"
    );
}
