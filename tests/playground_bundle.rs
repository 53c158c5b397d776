//! A binary serves the playground bundle it was built with, whatever the
//! order of builds (`build.rs`; issue 23).
//!
//! Without debug assertions rust-embed puts `playground/dist` into the
//! binary, and cargo alone does not notice a file added to the folder, or the
//! folder appearing after a build made without it: `cargo build --release`
//! before the bundle was built, then the bundle, then `make run`, served "the
//! playground is not built". vman's `build.rs` makes cargo watch the folder.
//!
//! A release build of vman takes minutes, so this builds a crate of a few
//! lines instead, with vman's `build.rs` (copied) and the same rust-embed
//! derive over its own `playground/dist`, built as `--release` builds
//! (without debug assertions; unoptimised, to be quick), and runs it after
//! each change of the folder: it must list what the folder holds then. Its
//! target directory is `target/playground-bundle-check` (the first run
//! compiles rust-embed and its few dependencies, later runs only the crate).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

const MAIN: &str = r#"
#[derive(rust_embed::Embed)]
#[folder = "playground/dist"]
#[allow_missing = true]
struct Bundle;

fn main() {
    let mut names: Vec<_> = Bundle::iter().collect();
    names.sort();
    for name in names {
        let file = Bundle::get(&name).unwrap();
        println!("{name}={}", String::from_utf8_lossy(&file.data));
    }
}
"#;

struct Crate {
    dir: PathBuf,
    target: PathBuf,
}

/// What one `cargo build` said.
struct Built {
    /// Whether cargo compiled the crate again (not fresh).
    compiled: bool,
    /// The build script's warnings.
    warnings: String,
}

impl Crate {
    fn new(dir: &Path) -> Crate {
        let manifest = "[package]\nname = \"bundle-check\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nrust-embed = \"8\"\n\n\
             # As --release builds: rust-embed embeds the folder.\n\
             [profile.dev]\ndebug-assertions = false\ndebug = false\n\n[workspace]\n";
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
        std::fs::write(dir.join("src/main.rs"), MAIN).unwrap();
        std::fs::copy(Path::new(ROOT).join("build.rs"), dir.join("build.rs")).unwrap();
        // vman's versions, from the local registry cache.
        std::fs::copy(Path::new(ROOT).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
        Crate {
            dir: dir.to_owned(),
            target: Path::new(ROOT).join("target/playground-bundle-check"),
        }
    }

    fn dist(&self) -> PathBuf {
        self.dir.join("playground/dist")
    }

    fn build(&self) -> Built {
        let out = Command::new(env!("CARGO"))
            .args(["build", "--offline", "--message-format=json"])
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", &self.target)
            .env_remove("RUSTFLAGS")
            .output()
            .expect("cargo runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo build failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut built = Built {
            compiled: false,
            warnings: String::new(),
        };
        for line in stdout.lines() {
            let message: serde_json::Value = serde_json::from_str(line).unwrap();
            if message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "bundle-check"
            {
                built.compiled = message["fresh"] == false;
            }
        }
        // Build script warnings are printed by cargo on stderr.
        built.warnings = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|line| line.contains("warning: bundle-check"))
            .collect::<Vec<_>>()
            .join("\n");
        built
    }

    /// What the built binary embeds: `name=content`, one a line.
    fn embedded(&self) -> String {
        let out = Command::new(self.target.join("debug/bundle-check"))
            .output()
            .expect("the binary runs");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }
}

#[test]
fn a_build_embeds_the_bundle_as_it_is_whatever_the_order_of_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let krate = Crate::new(tmp.path());

    // Built before the bundle: nothing embedded, and cargo says why.
    let built = krate.build();
    assert!(
        built.warnings.contains("playground/dist is not built"),
        "{}",
        built.warnings
    );
    assert_eq!(krate.embedded(), "");

    // The bundle is built (the folder appears): the next build embeds it.
    std::fs::create_dir_all(krate.dist()).unwrap();
    std::fs::write(krate.dist().join("index.html"), "one").unwrap();
    let built = krate.build();
    assert!(built.compiled, "the crate was not compiled again");
    assert!(built.warnings.is_empty(), "{}", built.warnings);
    assert_eq!(krate.embedded(), "index.html=one\n");

    // Nothing changed: nothing is compiled.
    assert!(
        !krate.build().compiled,
        "compiled again with nothing changed"
    );

    // A file added (a new content-hashed asset), one changed.
    std::fs::create_dir_all(krate.dist().join("assets")).unwrap();
    std::fs::write(krate.dist().join("assets/app-1.js"), "two").unwrap();
    std::fs::write(krate.dist().join("index.html"), "one, then app-1").unwrap();
    assert!(krate.build().compiled);
    assert_eq!(
        krate.embedded(),
        "assets/app-1.js=two\nindex.html=one, then app-1\n"
    );

    // A file removed, another added, as a rebuilt bundle does.
    std::fs::remove_file(krate.dist().join("assets/app-1.js")).unwrap();
    std::fs::write(krate.dist().join("assets/app-2.js"), "three").unwrap();
    assert!(krate.build().compiled);
    assert_eq!(
        krate.embedded(),
        "assets/app-2.js=three\nindex.html=one, then app-1\n"
    );

    // Only a file removed: its directory changed.
    std::fs::remove_file(krate.dist().join("assets/app-2.js")).unwrap();
    assert!(krate.build().compiled);
    assert_eq!(krate.embedded(), "index.html=one, then app-1\n");
}
