//! Drives the [`fuzz_compile`] target (no nightly toolchain needed): over every file of the
//! saved corpus (`compiler/fuzz-corpus/`), over seeded mutations of it, and over seeded
//! random bytes. Bounded and deterministic; a failing input can be saved into the corpus.

use skiff_compiler::fuzz_compile;
use skiff_vm::fuzz::Rng;
use std::path::PathBuf;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz corpus directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Iterations of the seeded loops: `SKIFF_FUZZ_ITERS` scales them up for a longer local run.
fn iters(default: usize) -> usize {
    std::env::var("SKIFF_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn corpus_files() {
    let files = corpus();
    assert!(files.len() >= 5);
    for (path, bytes) in files {
        eprintln!("{}", path.display());
        fuzz_compile(&bytes);
    }
}

fn mutate(rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(6) {
            0 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(16)).min(len);
                out.drain(a..b);
            }
            1 => {
                let at = rng.below(len + 1);
                let junk = [
                    b'(', b')', b'{', b'}', b'[', b']', b'"', b'\n', b';', b',', b'-', b'.',
                ];
                out.insert(at, junk[rng.below(junk.len())]);
            }
            2 if len > 0 => {
                let at = rng.below(len);
                out[at] = rng.next_u64() as u8;
            }
            3 => {
                // Splice a piece of another corpus file in.
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    out.splice(at..at, other[a..b].iter().copied());
                }
            }
            4 if len > 0 => {
                // Duplicate a range (deepens nesting quickly).
                let a = rng.below(len);
                let b = (a + rng.below(32)).min(len);
                let piece: Vec<u8> = out[a..b].to_vec();
                out.splice(a..a, piece);
            }
            _ => {
                let kws: [&[u8]; 8] = [
                    b"remote", b"fn", b"let", b"for", b"try", b"const", b"spawn", b"break",
                ];
                let at = rng.below(len + 1);
                out.splice(at..at, kws[rng.below(kws.len())].iter().copied());
            }
        }
    }
    out
}

#[test]
fn seeded_mutations_of_the_corpus() {
    let pool: Vec<Vec<u8>> = corpus().into_iter().map(|(_, b)| b).collect();
    let mut rng = Rng::for_loop(0x5eed_0001);
    for _ in 0..iters(1500) {
        let base = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, base, &pool);
        fuzz_compile(&input);
    }
}

#[test]
fn seeded_random_bytes() {
    let mut rng = Rng::for_loop(0x5eed_0002);
    for _ in 0..iters(500) {
        let len = rng.below(300);
        let input: Vec<u8> = (0..len)
            .map(|_| {
                // Bias toward ASCII punctuation and letters, where the grammar lives.
                if rng.below(4) == 0 {
                    rng.next_u64() as u8
                } else {
                    const ALPHABET: &[u8] = b" \n(){}[],.:;+-*/%=<>!\"\\abcdefxyz0123456789_";
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            })
            .collect();
        fuzz_compile(&input);
    }
}
