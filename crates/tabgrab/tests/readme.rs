//! README.md's code is `examples/quickstart.rs`, and it prints what README.md says it prints.
//!
//! The test runs the example's binary, which `cargo test` and `cargo nextest` build beside
//! the test binaries (`target/<profile>/examples/`), and compares its standard output with
//! README.md's `text` block.

use std::path::{Path, PathBuf};
use std::process::Command;

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced block of `lang` that follows `after` in `text`.
fn block_after<'a>(text: &'a str, after: &str, lang: &str) -> &'a str {
    let from = text
        .find(after)
        .unwrap_or_else(|| panic!("README.md has no {after:?}"));
    let fence = format!("```{lang}\n");
    let start = text[from..]
        .find(&fence)
        .map(|i| from + i + fence.len())
        .unwrap_or_else(|| panic!("README.md has no ```{lang} block after {after:?}"));
    let end = text[start..]
        .find("```\n")
        .map(|i| start + i)
        .unwrap_or_else(|| panic!("README.md's ```{lang} block after {after:?} is not closed"));
    &text[start..end]
}

/// The built example `name`: `target/<profile>/examples/<name>`, beside `deps/` where this
/// test binary is.
fn example_binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps");
    let example = profile
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        example.is_file(),
        "{} is not built; `cargo test` and `cargo nextest run` build the examples with the tests",
        example.display()
    );
    example
}

#[test]
fn the_readme_shows_the_quickstart_example() {
    let example = include_str!("../examples/quickstart.rs");
    // The example without its module doc (how to run it), as README.md shows it.
    let code = &example[example
        .find("use std::time::Duration;")
        .expect("the example starts with its imports")..];
    let readme = readme();
    let shown = block_after(&readme, "## In code", "rust");
    assert!(
        shown == code,
        "README.md's code block differs from crates/tabgrab/examples/quickstart.rs; copy the \
         example (from its first `use`) into README.md"
    );
}

#[test]
fn the_quickstart_prints_what_the_readme_says() {
    let example = example_binary("quickstart");
    let output = Command::new(&example)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", example.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the quickstart failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let readme = readme();
    let expected = block_after(&readme, "It prints:", "text");
    assert!(
        stdout.contains(expected),
        "the quickstart printed\n{stdout}\nbut README.md says it prints\n{expected}"
    );
}
