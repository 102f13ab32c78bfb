//! README.md's code is three examples, each shown whole, and each prints what README.md says
//! it prints; README.md stays within 10 KB.
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

/// The README's examples: the bold line that introduces each, and its file in `examples/`.
const EXAMPLES: [(&str, &str); 3] = [
    ("**Publish an event and handle it**", "publish_and_handle"),
    (
        "**Send a request, handle its reply on another node**",
        "request_on_another_node",
    ),
    (
        "**Make a call with a deadline and a breaker**",
        "call_with_deadline",
    ),
];

/// An example's source as README.md shows it: from its first `use` (without the module doc
/// that says how to run it).
fn shown_part(source: &str) -> &str {
    &source[source
        .find("use ")
        .expect("an example starts with its imports")..]
}

#[test]
fn the_readme_shows_each_example_whole_within_10_kb() {
    let readme = readme();
    assert!(
        readme.len() <= 10_000,
        "README.md is {} bytes; it leads with code and stays within 10 KB (guides go in docs/)",
        readme.len()
    );
    for (intro, name) in EXAMPLES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
        let source =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            block_after(&readme, intro, "rust") == shown_part(&source),
            "README.md's code after {intro} differs from examples/{name}.rs; copy the example \
             (from its first `use`) into README.md"
        );
    }
}

#[test]
fn each_example_prints_what_the_readme_says() {
    let readme = readme();
    for (intro, name) in EXAMPLES {
        let example = example_binary(name);
        let output = Command::new(&example)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", example.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name} failed ({}): {stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        // The `text` block after the example's code.
        let code = block_after(&readme, intro, "rust");
        let after_code = readme.find(code).expect("the code is in README.md") + code.len();
        let expected = block_after(&readme[after_code..], "It prints:", "text");
        assert!(
            stdout == expected,
            "{name} printed\n{stdout}\nbut README.md says it prints\n{expected}"
        );
    }
}
