//! Replays the RESP fuzz corpus (`fuzz/corpus/resp/`, `fuzz/regressions/resp/`)
//! through the fuzz target's body, so a regression shows in every `cargo test`.

use std::path::Path;

#[test]
fn every_resp_fuzz_corpus_input_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(sub).join("resp")) else { continue };
        for e in rd {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| latchkey_server::resp::fuzz(&data));
            assert!(r.is_ok(), "{} makes the RESP parser panic", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "no RESP corpus under {}", root.display());
}
