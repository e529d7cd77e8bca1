//! `nexuspipe plugin new|build|test`: from nothing to a deployed plugin in
//! Rust, Python, JavaScript or C. A project is a folder with a manifest
//! (`nexuspipe-plugin.toml`: name, language, world), the WIT (written from
//! this binary, so a project outside the repository builds), the world's
//! code, and `tests/<case>.input.ndjson` beside `<case>.expected.ndjson`.

use anyhow::{Context, Result, bail};
use nexuspipe::runtime::{Runtime, World};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The contract, as this binary was built with it.
const WIT: &str = include_str!("../../../wit/plugin.wit");
const MANIFEST: &str = "nexuspipe-plugin.toml";
const INPUT: &str = include_str!("../../templates/common/input.ndjson");
/// The pinned toolchain versions the templates are tested with.
const COMPONENTIZE_PY: &str = "0.25.1";
const WIT_BINDGEN: &str = "0.63.0";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WorldArg {
    Enricher,
    Aggregator,
    Alerter,
}

impl WorldArg {
    fn name(self) -> &'static str {
        match self {
            WorldArg::Enricher => "enricher",
            WorldArg::Aggregator => "aggregator",
            WorldArg::Alerter => "alerter",
        }
    }

    fn world(self) -> World {
        match self {
            WorldArg::Enricher => World::Enricher,
            WorldArg::Aggregator => World::Aggregator,
            WorldArg::Alerter => World::Alerter,
        }
    }

    /// The expected output of the sample input, as the template's code gives it.
    fn expected(self) -> &'static str {
        match self {
            WorldArg::Enricher => include_str!("../../templates/common/enricher.expected.ndjson"),
            WorldArg::Aggregator => {
                include_str!("../../templates/common/aggregator.expected.ndjson")
            }
            WorldArg::Alerter => include_str!("../../templates/common/alerter.expected.ndjson"),
        }
    }

    /// What the sample does, for the project's README.
    fn sample(self) -> &'static str {
        match self {
            WorldArg::Enricher => "sets `is_mobile` on every event from its user agent",
            WorldArg::Aggregator => {
                "counts events per type in one-minute windows (`events_per_minute`)"
            }
            WorldArg::Alerter => "fires an alert (`error_event`) for every `error` event",
        }
    }
}

/// The template files of a language and world: (path in the project, text).
fn template(lang: Lang, world: WorldArg) -> Vec<(&'static str, &'static str)> {
    use WorldArg::*;
    match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml.tmpl"),
            ),
            (
                "src/lib.rs",
                match world {
                    Enricher => include_str!("../../templates/rust/enricher.rs"),
                    Aggregator => include_str!("../../templates/rust/aggregator.rs"),
                    Alerter => include_str!("../../templates/rust/alerter.rs"),
                },
            ),
        ],
        Lang::Python => vec![(
            "app.py",
            match world {
                Enricher => include_str!("../../templates/python/enricher.py"),
                Aggregator => include_str!("../../templates/python/aggregator.py"),
                Alerter => include_str!("../../templates/python/alerter.py"),
            },
        )],
        Lang::Js => vec![
            (
                "package.json",
                include_str!("../../templates/js/package.json"),
            ),
            (
                "src/plugin.js",
                match world {
                    Enricher => include_str!("../../templates/js/enricher.js"),
                    Aggregator => include_str!("../../templates/js/aggregator.js"),
                    Alerter => include_str!("../../templates/js/alerter.js"),
                },
            ),
        ],
        Lang::C => vec![(
            "plugin.c",
            match world {
                Enricher => include_str!("../../templates/c/enricher.c"),
                Aggregator => include_str!("../../templates/c/aggregator.c"),
                Alerter => include_str!("../../templates/c/alerter.c"),
            },
        )],
    }
}

/// `nexuspipe-plugin.toml`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub lang: Lang,
    pub world: WorldArg,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: not a plugin project (no {MANIFEST}; create one with `nexuspipe plugin new`)",
                dir.display()
            )
        })?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    /// Where `build` puts the component.
    pub fn component(&self, dir: &Path) -> PathBuf {
        dir.join("build").join(format!("{}.wasm", self.name))
    }
}

/// `nexuspipe plugin new`.
pub fn new(name: &str, lang: Lang, world: WorldArg, dir: Option<&Path>) -> Result<()> {
    // It names the plugin, the Cargo crate and the npm package: what all accept.
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter (at most 64)"
        );
    }
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if root.exists() && std::fs::read_dir(&root)?.next().is_some() {
        bail!("{} exists and is not empty", root.display());
    }
    let manifest = Manifest {
        name: name.to_string(),
        lang,
        world,
    };
    let mut files: Vec<(String, String)> = vec![
        (
            MANIFEST.into(),
            format!(
                "# Read by `nexuspipe plugin build`, `test` and `deploy`.\n{}",
                toml::to_string(&manifest)?
            ),
        ),
        ("wit/plugin.wit".into(), WIT.into()),
        ("tests/sample.input.ndjson".into(), INPUT.into()),
        (
            "tests/sample.expected.ndjson".into(),
            world.expected().into(),
        ),
        ("README.md".into(), readme(&manifest)),
        (
            ".gitignore".into(),
            "build/\ntarget/\nnode_modules/\n__pycache__/\n".into(),
        ),
    ];
    for (path, text) in template(lang, world) {
        files.push((path.into(), text.replace("{{name}}", name)));
    }
    for (path, text) in &files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created {} ({} {}, {}): cd {} && nexuspipe plugin build && nexuspipe plugin test",
        root.display(),
        lang_name(lang),
        world.name(),
        world.sample(),
        root.display()
    );
    Ok(())
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
        Lang::C => "C",
    }
}

/// What a language's build needs, for the README and for errors.
fn toolchain(lang: Lang) -> String {
    match lang {
        Lang::Rust => "Rust (https://rustup.rs) and its Wasm target: `rustup target add wasm32-wasip2`".into(),
        Lang::Python => format!(
            "componentize-py: `python3 -m pip install componentize-py=={COMPONENTIZE_PY}` (found on PATH, or importable by python3)"
        ),
        Lang::Js => "Node.js 18 or later, then `npm install` here (package.json lists jco and componentize-js)".into(),
        Lang::C => format!(
            "clang, lld and wasi-libc (Debian: `apt install clang lld wasi-libc libclang-rt-<clang major>-dev-wasm32`), `cargo install wit-bindgen-cli --version {WIT_BINDGEN}` and `cargo install wasm-tools`"
        ),
    }
}

fn readme(m: &Manifest) -> String {
    let code = match m.lang {
        Lang::Rust => "src/lib.rs",
        Lang::Python => "app.py",
        Lang::Js => "src/plugin.js",
        Lang::C => "plugin.c",
    };
    format!(
        "# {name}\n\nA NexusPipe {world} in {lang}. As generated, it {sample}; \
         your logic goes in `{code}`.\n\n\
         ```sh\n\
         nexuspipe plugin build     # -> build/{name}.wasm\n\
         nexuspipe plugin test      # tests/*.input.ndjson against tests/*.expected.ndjson (--bless rewrites them)\n\
         nexuspipe plugin deploy --server http://127.0.0.1:8000 --token \"$NEXUSPIPE_ADMIN_TOKEN\"\n\
         ```\n\n\
         Needs: {tools}.\n\n\
         - `wit/plugin.wit` is the contract with the host, written by `nexuspipe plugin new` \
         from the nexuspipe binary; the bindings are generated from it at build time.\n\
         - A test case is `<case>.input.ndjson` in `tests/` or here (one canonical JSON event \
         per line), with `<case>.config` beside it for a plugin config if it needs one; its \
         outputs are compared with `<case>.expected.ndjson` (events, points or alerts, as \
         `nexuspipe plugin run` prints them).\n",
        name = m.name,
        world = m.world.name(),
        lang = lang_name(m.lang),
        sample = m.world.sample(),
        tools = toolchain(m.lang),
    )
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn need(name: &str, lang: Lang) -> Result<PathBuf> {
    on_path(name).with_context(|| {
        format!(
            "`{name}` not found on PATH: the {} build needs {}",
            lang_name(lang),
            toolchain(lang)
        )
    })
}

/// Runs a build step; a failure shows its output.
fn run(what: &str, cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `nexuspipe plugin build`: the language's toolchain, then a check that
/// the component loads and is the manifest's world. Returns its path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let m = Manifest::read(dir)?;
    let started = Instant::now();
    let out = m.component(dir);
    std::fs::create_dir_all(dir.join("build"))?;
    let world = m.world.name();
    let target = Path::new("build").join(format!("{}.wasm", m.name));
    match m.lang {
        Lang::Rust => {
            need("cargo", m.lang)?;
            if on_path("rustup").is_some() {
                let installed = Command::new("rustup")
                    .args(["target", "list", "--installed"])
                    .current_dir(dir)
                    .output()
                    .context("rustup target list")?;
                if !String::from_utf8_lossy(&installed.stdout).contains("wasm32-wasip2") {
                    bail!(
                        "the Rust target wasm32-wasip2 is not installed: rustup target add wasm32-wasip2"
                    );
                }
            }
            // Named, so the component is where this looks for it.
            let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(d) => std::path::absolute(d)?,
                None => std::path::absolute(dir.join("target"))?,
            };
            run(
                "cargo build",
                Command::new("cargo")
                    .args([
                        "build",
                        "--release",
                        "--target",
                        "wasm32-wasip2",
                        "--target-dir",
                    ])
                    .arg(&target_dir)
                    .current_dir(dir)
                    // Flags meant for this machine (target-cpu=native...) are not for Wasm.
                    .env_remove("RUSTFLAGS")
                    .env_remove("CARGO_ENCODED_RUSTFLAGS"),
            )?;
            let built = target_dir
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", m.name.replace('-', "_")));
            std::fs::copy(&built, &out)
                .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
        }
        Lang::Python => {
            let args = ["-d", "wit", "-w", world, "componentize", "app", "-o"];
            if let Some(cpy) = on_path("componentize-py") {
                run(
                    "componentize-py",
                    Command::new(cpy).args(args).arg(&target).current_dir(dir),
                )?;
            } else {
                // Installed by pip without its script on PATH, or in a
                // directory of its own ($NEXUSPIPE_TOOLS/componentize-py).
                let python = need("python3", m.lang)?;
                let mut path = std::env::var_os("PYTHONPATH")
                    .map_or_else(Vec::new, |p| std::env::split_paths(&p).collect());
                if let Some(tools) = std::env::var_os("NEXUSPIPE_TOOLS") {
                    path.push(PathBuf::from(tools).join("componentize-py"));
                }
                let path = std::env::join_paths(path)?;
                let importable = Command::new(&python)
                    .args(["-c", "import componentize_py"])
                    .env("PYTHONPATH", &path)
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !importable {
                    bail!(
                        "componentize-py not found (not on PATH, not importable by python3): the Python build needs {}",
                        toolchain(m.lang)
                    );
                }
                run(
                    "componentize-py",
                    Command::new(&python)
                        .args([
                            "-c",
                            "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
                        ])
                        .args(args)
                        .arg(&target)
                        .env("PYTHONPATH", &path)
                        .current_dir(dir),
                )?;
            }
        }
        Lang::Js => {
            need("node", m.lang)?;
            let local = dir.join("node_modules/.bin/jco");
            let jco = if local.is_file() {
                local
            } else {
                on_path("jco").with_context(|| {
                    format!("jco not found (not in node_modules/.bin, not on PATH): run `npm install` in {} (the JavaScript build needs {})", dir.display(), toolchain(m.lang))
                })?
            };
            // --disable all: no WASI clocks, random, stdio or http imports.
            run(
                "jco componentize",
                Command::new(jco)
                    .args([
                        "componentize",
                        "src/plugin.js",
                        "--wit",
                        "wit",
                        "--world-name",
                        world,
                        "--disable",
                        "all",
                        "-o",
                    ])
                    .arg(&target)
                    .current_dir(dir),
            )?;
        }
        Lang::C => {
            for tool in ["clang", "wasm-ld", "wit-bindgen", "wasm-tools"] {
                need(tool, m.lang)?;
            }
            let generated = dir.join("build/gen");
            std::fs::create_dir_all(&generated)?;
            // wasi-libc speaks WASI preview 1; this adapter (wasmtime's, as
            // the host embeds it) maps it onto preview 2.
            let adapter = generated.join("wasi_snapshot_preview1.reactor.wasm");
            std::fs::write(
                &adapter,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )?;
            run(
                "wit-bindgen c",
                Command::new("wit-bindgen")
                    .args(["c", "--world", world, "--out-dir", "build/gen", "wit"])
                    .current_dir(dir),
            )?;
            // A reactor module (no main; the host calls its exports).
            run(
                "clang",
                Command::new("clang")
                    .args([
                        "--target=wasm32-wasi",
                        "-mexec-model=reactor",
                        "-O2",
                        "-std=gnu11",
                        "-Wall",
                        "-Wextra",
                        "-Wno-unused-parameter",
                        "-I",
                        "build/gen",
                        "-o",
                        "build/gen/plugin.core.wasm",
                        "plugin.c",
                    ])
                    .arg(format!("build/gen/{world}.c"))
                    .arg(format!("build/gen/{world}_component_type.o"))
                    .current_dir(dir),
            )?;
            run(
                "wasm-tools component new",
                Command::new("wasm-tools")
                    .args(["component", "new", "build/gen/plugin.core.wasm", "--adapt"])
                    .arg(format!("wasi_snapshot_preview1={}", adapter.display()))
                    .arg("-o")
                    .arg(&target)
                    .current_dir(dir),
            )?;
        }
    }
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let component = runtime
        .load_file(&out)
        .with_context(|| format!("{} was built but is not a usable plugin", out.display()))?;
    if component.world != m.world.world() {
        bail!(
            "{} exports the {} world, but {MANIFEST} says {}",
            out.display(),
            component.world,
            world
        );
    }
    let size = std::fs::metadata(&out)?.len();
    println!(
        "built {} ({world}, {} KiB) in {:.1} s",
        out.display(),
        size / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// One case's outputs as JSON lines.
fn read_lines(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: malformed JSON", path.display(), i + 1))
        })
        .collect()
}

/// `nexuspipe plugin test`: every `tests/<case>.input.ndjson` through the
/// built component, compared with `<case>.expected.ndjson` (`bless`: written).
pub fn test(dir: &Path, bless: bool) -> Result<()> {
    let m = Manifest::read(dir)?;
    let component = m.component(dir);
    if !component.is_file() {
        bail!(
            "{} is not built yet: run `nexuspipe plugin build` first",
            component.display()
        );
    }
    // Cases in `tests/` and in the project's own folder: (folder, case).
    let mut cases: Vec<(PathBuf, String)> = Vec::new();
    for folder in [dir.join("tests"), dir.to_path_buf()] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(case) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".input.ndjson"))
            {
                cases.push((folder.clone(), case.to_string()));
            }
        }
    }
    cases.sort();
    if cases.is_empty() {
        bail!("no test cases: add tests/<case>.input.ndjson");
    }
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let loaded = runtime
        .load_file(&component)
        .with_context(|| format!("{} is not a usable plugin", component.display()))?;
    let mut failed = Vec::new();
    for (tests, case) in &cases {
        let config_path = tests.join(format!("{case}.config"));
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", config_path.display())),
        };
        let input = tests.join(format!("{case}.input.ndjson"));
        let events = super::plugin::read_events(&input)?;
        let (got, run) = super::plugin::run_plugin(
            &m.name,
            loaded.clone(),
            &config,
            events,
            &Default::default(),
        )
        .with_context(|| format!("case {case}"))?;
        let expected_path = tests.join(format!("{case}.expected.ndjson"));
        // A batch the plugin failed (a trap, a deadline...) fails the case:
        // its outputs would be missing without a word.
        if let Some(d) = run.output.dead.first() {
            let lost: usize = run.output.dead.iter().map(|d| d.events.len()).sum();
            println!(
                "FAIL {case}: the plugin failed {} batch(es) ({lost} events): {:?}: {}",
                run.output.dead.len(),
                d.kind,
                d.error
            );
            failed.push(case.as_str());
            continue;
        }
        if !run.output.late.is_empty() {
            println!(
                "note {case}: {} late event(s), not in the outputs",
                run.output.late.len()
            );
        }
        if bless {
            let text: String = got.iter().map(|v| format!("{v}\n")).collect();
            std::fs::write(&expected_path, text)?;
            println!("blessed {case}: {} outputs", got.len());
            continue;
        }
        if !expected_path.exists() {
            println!(
                "FAIL {case}: no {} (`nexuspipe plugin test --bless` writes it from the outputs)",
                expected_path.display()
            );
            failed.push(case.as_str());
            continue;
        }
        let expected = read_lines(&expected_path)?;
        if got == expected {
            println!("ok   {case} ({} outputs)", got.len());
            continue;
        }
        println!(
            "FAIL {case}: outputs differ from {}",
            expected_path.display()
        );
        print!("{}", diff(&expected, &got));
        failed.push(case.as_str());
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} cases failed: {} (`nexuspipe plugin test --bless` writes the outputs as expected)",
            failed.len(),
            cases.len(),
            failed.join(", ")
        );
    }
    if !bless {
        println!("{} cases passed", cases.len());
    }
    Ok(())
}

/// A line-by-line diff of outputs: `-` expected, `+` got, by position.
fn diff(expected: &[serde_json::Value], got: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for i in 0..expected.len().max(got.len()) {
        match (expected.get(i), got.get(i)) {
            (Some(e), Some(g)) if e == g => {}
            (e, g) => {
                out.push_str(&format!("  output {}:\n", i + 1));
                if let Some(e) = e {
                    out.push_str(&format!("    - {e}\n"));
                }
                if let Some(g) = g {
                    out.push_str(&format!("    + {g}\n"));
                }
            }
        }
    }
    out
}
