//! Every input in the fuzz corpora (`fuzz/corpus/<target>`: the seeds and what fuzzing kept)
//! and every crash found so far (`fuzz/regressions/<target>`) goes through its parser again on
//! each test run: a fixed crash stays fixed without a fuzzer.

use std::path::Path;

use megafsd::fuzz_targets::TARGETS;

#[test]
fn every_corpus_input_and_past_crash_parses_without_panicking() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = 0;
    for (name, target) in TARGETS {
        let seeds = fuzz.join("corpus").join(name);
        assert!(seeds.is_dir(), "target {name} has a seed corpus");
        for dir in [seeds, fuzz.join("regressions").join(name)] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                target(&data);
                inputs += 1;
            }
        }
    }
    assert!(inputs >= TARGETS.len(), "only {inputs} inputs");
}
