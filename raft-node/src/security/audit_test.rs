use super::*;

fn consumer() -> AuditCaller {
    AuditCaller::of_identity(&Identity::new(Role::ResourceConsumer, "agent", Some("team-a".into())).unwrap())
}

fn admin() -> AuditCaller {
    AuditCaller::of_identity(&Identity::new(Role::Admin, "ops", None).unwrap())
}

fn ids(pairs: &[(&'static str, &str)]) -> AuditIds {
    pairs.iter().map(|(name, value)| (*name, value.to_string())).collect()
}

#[test]
fn a_record_is_one_json_object_with_the_identity_call_ids_and_outcome() {
    let denied = Status::permission_denied("resource_consumer \"agent\" may not call AddReplica");
    let record = AuditRecord::new(
        Transport::Grpc,
        Call::AddReplica,
        consumer(),
        ids(&[("replica_id", "4")]),
        Some(&denied),
    );
    let json: serde_json::Value = serde_json::to_value(&record).unwrap();
    assert_eq!("AddReplica", json["call"]);
    assert_eq!("grpc", json["transport"]);
    assert_eq!("denied", json["outcome"]);
    assert_eq!("permission_denied", json["code"]);
    assert_eq!(
        serde_json::json!({"tls": true, "name": "agent", "role": "resource_consumer", "namespace": "team-a"}),
        json["caller"]
    );
    assert_eq!(serde_json::json!({"replica_id": "4"}), json["ids"]);
    assert!(json.get("correlation_id").is_none());
}

#[test]
fn the_correlation_id_is_the_callers_header_else_the_request_id() {
    let call = ids(&[("request_id", "3f1c")]);
    let record = AuditRecord::new(Transport::Http, Call::Allocate, consumer(), call, None);
    assert_eq!(Some("3f1c"), record.correlation_id.as_deref());
    let record = record.with_correlation_id(Some("trace-7\n"));
    assert_eq!(
        Some("trace-7 "),
        record.correlation_id.as_deref(),
        "control characters never reach the file"
    );
}

#[test]
fn the_policy_records_writes_refusals_and_admin_reads_only() {
    let ok = |call, caller| AuditRecord::new(Transport::Grpc, call, caller, AuditIds::new(), None).wanted(call);
    assert!(ok(Call::Allocate, consumer()));
    assert!(ok(Call::ReleaseMatching, admin()));
    assert!(ok(Call::List, admin()));
    assert!(ok(Call::SnapshotSave, admin()));
    assert!(
        ok(Call::Get, AuditCaller::unidentified(false)),
        "without TLS every caller sees everything"
    );
    assert!(!ok(Call::Get, consumer()), "a consumer reads only its own namespace");
    assert!(!ok(Call::Heartbeat, AuditCaller::unidentified(false)));
    assert!(!ok(Call::AppendEntries, AuditCaller::unidentified(false)));
    assert!(!ok(Call::ClusterStatus, admin()));

    let denied = Status::unauthenticated("no client certificate");
    let refused = AuditRecord::new(
        Transport::Grpc,
        Call::Heartbeat,
        AuditCaller::unidentified(true),
        AuditIds::new(),
        Some(&denied),
    );
    assert!(refused.wanted(Call::Heartbeat), "every refusal is recorded");
}

#[test]
fn every_call_has_an_audit_class() {
    let writes: Vec<Call> = Call::ALL
        .into_iter()
        .filter(|call| call.audit_class() == AuditClass::Write)
        .collect();
    assert_eq!(19, writes.len(), "{writes:?}");
}

#[test]
fn a_file_is_rotated_before_it_would_pass_its_size_keeping_the_named_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let line = "x".repeat(99);
    let mut file = RotatingFile::open(&path, 1_000, 2).unwrap();
    // 100 bytes a line: 10 per file; 35 lines make the current file and
    // three full ones, of which two are kept.
    for _ in 0..35 {
        file.write_line(&line).unwrap();
    }
    file.flush().unwrap();
    let size = |path: &Path| std::fs::metadata(path).map(|meta| meta.len()).ok();
    assert_eq!(Some(500), size(&path));
    assert_eq!(Some(1_000), size(&rotated_path(&path, 1)));
    assert_eq!(Some(1_000), size(&rotated_path(&path, 2)));
    assert_eq!(None, size(&rotated_path(&path, 3)));

    // Reopened, it goes on from the size it has.
    drop(file);
    let mut file = RotatingFile::open(&path, 1_000, 2).unwrap();
    for _ in 0..6 {
        file.write_line(&line).unwrap();
    }
    file.flush().unwrap();
    assert_eq!(Some(100), size(&path));
}

#[test]
fn the_writer_thread_writes_what_the_policy_wants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let destination = AuditDestination::File {
        path: path.clone(),
        file_bytes_max: AUDIT_FILE_BYTES_MIN,
        files_kept: 1,
    };
    let log = AuditLog::start(7, &destination).unwrap();
    log.record(
        Call::Release,
        AuditRecord::new(Transport::Grpc, Call::Release, admin(), ids(&[("id", "abc")]), None),
    );
    log.record(
        Call::ClusterStatus,
        AuditRecord::new(Transport::Grpc, Call::ClusterStatus, admin(), AuditIds::new(), None),
    );
    drop(log);
    // The thread ends once the log is dropped and its queue written; wait for the line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.is_empty() || std::time::Instant::now() > deadline {
            break text.lines().map(str::to_owned).collect::<Vec<_>>();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(1, lines.len(), "{lines:?}");
    let json: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(7, json["replica"]);
    assert_eq!("Release", json["call"]);
    assert_eq!("abc", json["correlation_id"]);
}

#[test]
fn times_and_codes_are_written_as_people_read_them() {
    assert_eq!("1970-01-01T00:00:00.000Z", rfc3339_ms(0));
    assert_eq!("2026-12-07T05:35:01.123Z", rfc3339_ms(1_796_621_701_123));
    assert_eq!("2000-02-29T23:59:59.999Z", rfc3339_ms(951_868_799_999));
    assert_eq!("permission_denied", code_name(Code::PermissionDenied));
    assert_eq!("ok", code_name(Code::Ok));
}
