use std::process::Command;
use openraft::storage::RaftLogStorageExt;
use openraft::{EntryPayload, RaftLogReader};
use openraft::testing::log_id;
use qm_raft_node::types::Entry;

#[tokio::test]
async fn scratch() {
    if let Some(dir) = std::env::var_os("SCRATCH_DIR") {
        let mode = std::env::var("SCRATCH_MODE").unwrap();
        let (mut log, _sm) = qm_raft_node::storage::open(std::path::Path::new(&dir), Default::default()).await.unwrap();
        let n: u64 = mode.parse().unwrap();
        for i in 1..=n {
            log.blocking_append(vec![Entry { log_id: log_id(1, 1, i), payload: EntryPayload::Blank }]).await.unwrap();
        }
        std::process::exit(86);
    }
    for mode in ["1", "2", "3"] {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new(std::env::current_exe().unwrap()).args(["scratch", "--exact", "--nocapture"]).env("SCRATCH_DIR", dir.path()).env("SCRATCH_MODE", mode).status().unwrap();
        assert_eq!(Some(86), st.code());
        let (mut log, _sm) = qm_raft_node::storage::open(dir.path(), Default::default()).await.unwrap();
        println!("RESULT mode={mode} keys={}", log.try_get_log_entries(..).await.unwrap().len());
    }
}
