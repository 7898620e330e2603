//! Every input in `fuzz/corpus/<target>/` (the minimized seeds of the fuzzing
//! campaigns, and every crash found, kept as a regression) through its
//! target, on the stable toolchain: a decoder that panics again fails CI.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut replayed = 0;
    for (name, target) in qm_fuzz_targets::TARGETS {
        let dir = corpus.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        let mut inputs = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "{name}: no corpus in {}", dir.display());
        replayed += inputs;
    }
    println!("{replayed} corpus inputs replayed");
}
