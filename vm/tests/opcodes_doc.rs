//! `docs/opcodes.md` is generated from the one instruction table; this test fails when it is
//! out of date. Regenerate with `SKIFF_BLESS=1 cargo test -p skiff-vm --test opcodes_doc`.

const HEADER: &str = "# Skiff instruction set\n\n\
Generated from `vm/src/opcodes.rs` (the one definition); do not edit by hand.\n\
Regenerate with `SKIFF_BLESS=1 cargo test -p skiff-vm --test opcodes_doc`.\n\n\
Operands are fixed-width little-endian integers following the opcode byte. Stack effects\n\
read `before → after`, top of stack on the right. `target`, `handler` and `fallback` are\n\
absolute instruction indices within the function.\n\n";

#[test]
fn opcodes_doc_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/opcodes.md");
    let expected = format!("{HEADER}{}", skiff_vm::opcodes::markdown_table());
    if std::env::var_os("SKIFF_BLESS").is_some() {
        std::fs::write(path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/opcodes.md is stale: run SKIFF_BLESS=1 cargo test -p skiff-vm --test opcodes_doc"
    );
}
