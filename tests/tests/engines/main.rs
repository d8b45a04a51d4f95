//! Differential runs: one module, the same output archive and the same fuel on every engine
//! and CPU. Each workload (the example apps, the determinism probe and the NaN and SIMD
//! probe) runs
//! - in the real client, `wasmgrid exec` (wasmtime on this machine's CPU, x86_64);
//! - in the client cross-built for aarch64, under Debian's `qemu-user` (and for riscv64 and
//!   s390x in the fuller run, `WASMGRID_CROSS_TARGETS`; see README "Testing");
//! - in the fuller run, in the client cross-built for Windows with Debian's MinGW-w64, under
//!   Debian's `wine` (`x86_64-pc-windows-gnu` in `WASMGRID_CROSS_TARGETS`: its build takes
//!   seven minutes of CI's two cores);
//! - in a second engine: Node's V8, with the browser volunteer's own runtime
//!   (`web/static/contribute/`: the pass built for the browser, its WASI, limits and output
//!   archive), through `tests/node/run_browser_runtime.mjs`.
//!
//! The WASI probe (`workunits/wasi-probe`) takes its turn in each but Windows: files,
//! directories, seeks, refusals, descriptors, clocks and random numbers as Rust's standard
//! library uses them, and output files whose names stretch the archive's headers. (On
//! Windows wasmtime-wasi reports some failed file operations with other errors than on
//! Linux.) And the hostile corpus must end the same way in the browser's runtime as in the
//! native client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wasmgrid_e2e::bench::build_workunits;
use wasmgrid_protocol::api::RunLimits;

/// A run of one module: what it was given.
struct Workload {
    name: &'static str,
    module: PathBuf,
    args: Vec<String>,
    stdin: Vec<u8>,
    /// Files of its input directory.
    inputs: Vec<(&'static str, Vec<u8>)>,
    seed: u64,
    /// Whether it looks at the errors of file operations that fail, which wasmtime-wasi takes
    /// from the host's system: Windows gives other errors than Linux for some (renaming a
    /// directory over a file even succeeds), so such a module is compared on Linux only.
    host_errors: bool,
}

/// What every engine must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    outcome: String,
    output_sha256: Option<String>,
    fuel_used: u64,
}

const FUEL: u64 = 1 << 40;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// `target/<profile>/wasmgrid`, which cargo builds for the client's own tests in the same run.
fn client_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let path = deps.parent().unwrap().join("wasmgrid");
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first", path.display());
    path
}

fn workloads(scratch: &Path) -> Vec<Workload> {
    let examples = build_workunits(Some("wasm32-wasip1")).expect("the example work units build");
    let probe = |name: &'static str| {
        let path = scratch.join(format!("{name}.wasm"));
        let wasm = wat::parse_file(workspace().join(format!("workunits/probes/{name}.wat"))).unwrap();
        std::fs::write(&path, wasm).unwrap();
        path
    };
    let strings = |args: &[&str]| args.iter().map(|arg| arg.to_string()).collect();
    vec![
        Workload {
            name: "primes",
            module: examples.join("primes.wasm"),
            args: strings(&["0", "300000"]),
            stdin: Vec::new(),
            inputs: Vec::new(),
            seed: 1,
            host_errors: false,
        },
        Workload {
            name: "mandelbrot",
            module: examples.join("mandelbrot.wasm"),
            args: strings(&["1024", "1024", "128", "3", "4", "400"]),
            stdin: Vec::new(),
            inputs: Vec::new(),
            seed: 2,
            host_errors: false,
        },
        Workload {
            name: "nbody",
            module: examples.join("nbody.wasm"),
            args: Vec::new(),
            stdin: b"12 300 7\n".to_vec(),
            inputs: Vec::new(),
            seed: 3,
            host_errors: false,
        },
        Workload {
            name: "determinism probe",
            module: probe("determinism"),
            args: Vec::new(),
            stdin: Vec::new(),
            inputs: Vec::new(),
            seed: 42,
            host_errors: false,
        },
        Workload {
            name: "NaN and SIMD probe",
            module: probe("nan_simd"),
            args: Vec::new(),
            stdin: Vec::new(),
            inputs: Vec::new(),
            seed: 4,
            host_errors: false,
        },
        Workload {
            name: "renames probe",
            module: probe("renames"),
            args: Vec::new(),
            stdin: Vec::new(),
            inputs: Vec::new(),
            seed: 6,
            host_errors: false,
        },
        Workload {
            name: "WASI probe",
            module: examples.join("wasi-probe.wasm"),
            args: strings(&["alpha", "β"]),
            stdin: b"hello".to_vec(),
            inputs: vec![("numbers.txt", b"1 2 3\n".to_vec())],
            seed: 5,
            host_errors: true,
        },
    ]
}

/// How to run one build of the client here.
struct Client {
    /// The program and its first arguments: the client itself, or qemu or wine and the
    /// client.
    command: Vec<String>,
    environment: Vec<(String, String)>,
    /// Paths are given as Windows sees this machine's files (wine's drive Z:).
    windows_paths: bool,
}

impl Client {
    fn native(binary: &Path) -> Self {
        Self { command: vec![binary.to_string_lossy().into_owned()], environment: Vec::new(), windows_paths: false }
    }

    fn path(&self, path: &Path) -> String {
        let path = path.to_string_lossy();
        if self.windows_paths { format!("Z:{}", path.replace('/', "\\")) } else { path.into_owned() }
    }
}

/// `wasmgrid exec --json` in `client`, parsed; with the error the run ended with, if any, to
/// say why when answers differ.
fn in_client(client: &Client, workload: &Workload, scratch: &Path) -> (Answer, String) {
    let stdin = scratch.join(format!("{}.stdin", workload.name));
    std::fs::write(&stdin, &workload.stdin).unwrap();
    let inputs = input_dir(workload, scratch);
    let output = Command::new(&client.command[0])
        .args(&client.command[1..])
        .envs(client.environment.iter().map(|(name, value)| (name, value)))
        .arg("exec")
        .arg(client.path(&workload.module))
        .arg("--stdin")
        .arg(client.path(&stdin))
        .arg("--input")
        .arg(client.path(&inputs))
        .args(["--fuel", &FUEL.to_string(), "--seed", &workload.seed.to_string(), "--json", "--"])
        .args(&workload.args)
        .output()
        .unwrap();
    let command = &client.command;
    // The report on standard output says why the module failed: its error and its stderr.
    assert!(
        output.status.success(),
        "{command:?} exec failed: {}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let answer = Answer {
        outcome: report["outcome"].as_str().unwrap().to_owned(),
        output_sha256: report["output_sha256"].as_str().map(str::to_owned),
        fuel_used: report["fuel_used"].as_u64().unwrap(),
    };
    // Which of wasmtime's back ends ran (Pulley where Cranelift cannot compile the module on
    // that CPU), for the log of the fuller run.
    let backend = report["backend"].as_str().unwrap_or("none");
    let runner = Path::new(&command[0]).file_name().unwrap_or_default().to_string_lossy();
    eprintln!("{}: {} on {backend}, run by {runner}", workload.name, answer.outcome);
    (answer, report["error"].as_str().unwrap_or_default().to_owned())
}

/// The workload's input directory, made under `scratch`.
fn input_dir(workload: &Workload, scratch: &Path) -> PathBuf {
    let dir = scratch.join(format!("{}.input", workload.name.replace(' ', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &workload.inputs {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

/// What the browser's runtime said of a run, besides the answer: why it failed.
struct BrowserRun {
    answer: Answer,
    reason: String,
}

/// The workload run by the browser volunteer's runtime in Node's V8, with `wasmgrid exec`'s
/// default limits.
fn in_browser_runtime(workload: &Workload, fuel: u64, memory_bytes: u64, scratch: &Path) -> BrowserRun {
    let dir = scratch.join(format!("browser-{}", workload.name.replace(' ', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    let stdin = dir.join("stdin");
    std::fs::write(&stdin, &workload.stdin).unwrap();
    let inputs = input_dir(workload, scratch);
    let mut command = Command::new("node");
    command
        .arg(workspace().join("tests/node/run_browser_runtime.mjs"))
        .arg(&workload.module)
        .args(
            [fuel, memory_bytes, RunLimits::DEFAULT.output_bytes, EXEC_SCRATCH_BYTES, workload.seed]
                .map(|n| n.to_string()),
        )
        .arg(&stdin)
        .arg(dir.join("output.tar"));
    for (name, _) in &workload.inputs {
        command.arg("--input").arg(format!("{name}={}", inputs.join(name).display()));
    }
    let output = command.arg("--").args(&workload.args).output().expect("node runs (Debian's nodejs, 18 or later)");
    assert!(output.status.success(), "node failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    BrowserRun {
        answer: Answer {
            outcome: report["outcome"].as_str().unwrap().to_owned(),
            output_sha256: report["outputSha256"].as_str().map(str::to_owned),
            fuel_used: report["fuelUsed"].as_str().unwrap().parse().unwrap(),
        },
        reason: report["reason"].as_str().unwrap_or_default().to_owned(),
    }
}

/// `wasmgrid exec`'s default scratch limit, 1 GiB.
const EXEC_SCRATCH_BYTES: u64 = 1 << 30;

/// The other platforms' builds allow no warning, as the native one (clippy) does; cargo
/// does not pass it on to dependencies.
const CROSS_RUSTFLAGS: &str = "-D warnings";

/// The client for `target`, cross-built with Debian's cross compiler in a target directory
/// of its own (so this build never waits on the one running the tests). For aarch64, the
/// build it shares with the sandbox's tests.
fn cross_client(target: &str) -> PathBuf {
    if target == AARCH64 {
        return aarch64_build().client.clone();
    }
    cross_build_client(target, &format!("{}-gcc", gnu_triple(target))).join("wasmgrid")
}

/// Builds the client for `target`, linked and its C compiled by `gcc`; returns the directory
/// the binary is in.
fn cross_build_client(target: &str, gcc: &str) -> PathBuf {
    let status = cross_cargo(&["build", "--quiet", "-p", "wasmgrid-client"], target, gcc).status().unwrap();
    assert!(
        status.success(),
        "cross-building the client for {target} failed: it needs `rustup target add {target}` and Debian's {gcc}"
    );
    workspace().join("target/cross").join(target).join("debug")
}

/// `cargo <args>` for `target`, in the cross builds' target directory, linked and its C
/// compiled by `gcc`.
fn cross_cargo(args: &[&str], target: &str, gcc: &str) -> Command {
    let linker = format!("CARGO_TARGET_{}_LINKER", target.to_uppercase().replace('-', "_"));
    let mut command = wasmgrid_e2e::bench::cargo();
    command
        .current_dir(workspace())
        .args(args)
        .args(["--target", target])
        .arg("--target-dir")
        .arg(workspace().join("target/cross"))
        .env("RUSTFLAGS", CROSS_RUSTFLAGS)
        .env(linker, gcc)
        .env(format!("CC_{}", target.replace('-', "_")), gcc);
    command
}

const AARCH64: &str = "aarch64-unknown-linux-gnu";

/// The client and the sandbox's test programs, cross-built for aarch64 by one cargo run.
struct Aarch64Build {
    client: PathBuf,
    sandbox_tests: Vec<PathBuf>,
}

/// Builds (once) the client and the sandbox's tests for aarch64 together, so that they share
/// one build of every dependency: built apart, the sandbox alone turns on fewer features of
/// crates both use (tokio's, say), and wasmtime and everything under it would be compiled
/// twice for one CPU. The client's own tests come along; they are built, not run.
fn aarch64_build() -> &'static Aarch64Build {
    static BUILD: OnceLock<Aarch64Build> = OnceLock::new();
    BUILD.get_or_init(|| {
        let gcc = format!("{}-gcc", gnu_triple(AARCH64));
        let args = ["test", "--no-run", "--message-format", "json", "-p", "wasmgrid-sandbox", "-p", "wasmgrid-client"];
        let output = cross_cargo(&args, AARCH64, &gcc).output().unwrap();
        assert!(
            output.status.success(),
            "cross-building for {AARCH64} failed (it needs `rustup target add {AARCH64}` and Debian's {gcc}):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut client = None;
        let mut sandbox_tests = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(executable) = message["executable"].as_str() else { continue };
            let package = message["package_id"].as_str().unwrap_or_default();
            let is_test = message["profile"]["test"].as_bool().unwrap_or(false);
            if is_test && package.contains("wasmgrid-sandbox") {
                sandbox_tests.push(PathBuf::from(executable));
            } else if !is_test && message["target"]["name"] == "wasmgrid" {
                client = Some(PathBuf::from(executable));
            }
        }
        let client = client.expect("the cargo run built the client");
        Aarch64Build { client, sandbox_tests }
    })
}

fn gnu_triple(target: &str) -> String {
    let arch = target.split('-').next().unwrap();
    let arch = if arch == "riscv64gc" { "riscv64" } else { arch };
    format!("{arch}-linux-gnu")
}

/// How to run a binary for `target` here: Debian's qemu-user, with the target's libraries.
fn under_qemu(target: &str, binary: PathBuf) -> Client {
    let triple = gnu_triple(target);
    let arch = triple.split('-').next().unwrap();
    Client {
        command: vec![
            format!("qemu-{arch}"),
            "-L".into(),
            format!("/usr/{triple}"),
            binary.to_string_lossy().into_owned(),
        ],
        environment: Vec::new(),
        windows_paths: false,
    }
}

const WINDOWS: &str = "x86_64-pc-windows-gnu";

/// The client cross-built for Windows with Debian's MinGW-w64, and how to run it under
/// Debian's wine (64-bit), in a wine prefix of its own under `scratch`.
///
/// Wine 8 (Debian 12's) lacks `ProcessPrng` of `bcryptprimitives.dll`, which Rust's standard
/// library calls for random numbers: `tests/wine/bcryptprimitives.c` supplies it, on top of
/// the `RtlGenRandom` wine has, as a DLL beside the client.
fn windows_client(scratch: &Path) -> Client {
    let built = cross_build_client(WINDOWS, "x86_64-w64-mingw32-gcc");
    let dir = scratch.join("windows");
    std::fs::create_dir_all(&dir).unwrap();
    let client = dir.join("wasmgrid.exe");
    std::fs::copy(built.join("wasmgrid.exe"), &client).unwrap();
    let shim = Command::new("x86_64-w64-mingw32-gcc")
        .args(["-shared", "-O2", "-o"])
        .arg(dir.join("bcryptprimitives.dll"))
        .arg(workspace().join("tests/wine/bcryptprimitives.c"))
        .arg("-ladvapi32")
        .status()
        .unwrap();
    assert!(shim.success(), "building the ProcessPrng shim for wine failed");
    Client {
        command: vec![WINE.to_owned(), client.to_string_lossy().into_owned()],
        environment: vec![
            ("WINEPREFIX".to_owned(), scratch.join("wine-prefix").to_string_lossy().into_owned()),
            ("WINEDEBUG".to_owned(), "-all".to_owned()),
        ],
        windows_paths: true,
    }
}

/// Debian's 64-bit wine loader (the `wine` package's `wine` wrapper wants 32-bit wine too).
const WINE: &str = "/usr/lib/wine/wine64";

/// The Linux targets besides this machine's, run under qemu: aarch64 always, more when
/// `WASMGRID_CROSS_TARGETS` names them.
fn cross_targets() -> Vec<String> {
    let mut targets = vec![AARCH64.to_owned()];
    targets.extend(fuller_run_targets().into_iter().filter(|target| target != WINDOWS));
    targets.dedup();
    targets
}

/// The targets the fuller run adds: `WASMGRID_CROSS_TARGETS`, comma-separated Rust target
/// triples.
fn fuller_run_targets() -> Vec<String> {
    let named = std::env::var("WASMGRID_CROSS_TARGETS").unwrap_or_default();
    named.split(',').map(str::trim).filter(|target| !target.is_empty()).map(str::to_owned).collect()
}

/// The hostile corpus (workunits/hostile), each module with the limits its attack meets, as
/// (file, fuel, memory bytes, whether the fuel at the end is the module's own, the same on
/// every engine: not where the limit is noticed from outside, as the native client notices a
/// full scratch directory).
const HOSTILE: [(&str, u64, u64, bool); 14] = [
    ("infinite_loop", 10_000_000, 64 << 20, true),
    ("start_loop", 10_000_000, 64 << 20, true),
    ("memory_bomb", FUEL, 16 << 20, true),
    ("table_bomb", FUEL, 64 << 20, true),
    ("recursion", FUEL, 64 << 20, true),
    ("huge_stdout", FUEL, 64 << 20, true),
    ("deep_scratch", FUEL, 64 << 20, false),
    ("escape", FUEL, 64 << 20, true),
    ("unknown_import", FUEL, 64 << 20, true),
    ("page_reach", FUEL, 64 << 20, true),
    ("relaxed_simd", FUEL, 64 << 20, true),
    ("trap", FUEL, 64 << 20, true),
    ("nonzero_exit", FUEL, 64 << 20, true),
    ("not_a_command", FUEL, 64 << 20, true),
];

/// Every hostile module ends in the browser volunteer's runtime as in the native client's
/// sandbox (run here directly: `wasmgrid exec` would refuse some before running them, as the
/// server refuses them at publishing): the same outcome, the same words for it, and the same
/// fuel where the module decides it. (The attacks on the wall-clock limit, which the page's
/// timer meets, run in a real browser in the end-to-end tests.)
#[test]
fn the_browser_runtime_ends_every_hostile_module_as_the_native_client_does() {
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = wasmgrid_sandbox::Sandbox::new(&scratch.path().join("cache")).unwrap();
    for (name, fuel, memory_bytes, fuel_is_the_modules) in HOSTILE {
        let wasm = wat::parse_file(workspace().join(format!("workunits/hostile/{name}.wat"))).unwrap();
        let module = scratch.path().join(format!("{name}.wasm"));
        std::fs::write(&module, &wasm).unwrap();
        let run_dir = scratch.path().join(name);
        let (input_dir, scratch_dir) = (run_dir.join("input"), run_dir.join("scratch"));
        std::fs::create_dir_all(&input_dir).unwrap();
        std::fs::create_dir_all(&scratch_dir).unwrap();
        let limits = RunLimits { fuel, memory_bytes, ..RunLimits::DEFAULT };
        let spec = wasmgrid_sandbox::RunSpec {
            module_hash: wasmgrid_protocol::Sha256Hash::of(&wasm),
            module_path: module.clone(),
            args: Vec::new(),
            stdin: Vec::new(),
            input_dir,
            scratch_dir,
            limits,
            scratch_limit_bytes: EXEC_SCRATCH_BYTES,
            seed: 1,
        };
        let native = sandbox.run(&spec, &std::sync::Arc::new(wasmgrid_sandbox::RunControl::default()));
        let wasmgrid_sandbox::RunOutcome::Failed(error) = &native.outcome else {
            panic!("{name} fails natively, not {:?}", native.outcome)
        };
        let workload = Workload {
            name,
            module,
            args: Vec::new(),
            stdin: Vec::new(),
            inputs: Vec::new(),
            seed: 1,
            host_errors: false,
        };
        let browser = in_browser_runtime(&workload, fuel, memory_bytes, scratch.path());
        assert_eq!((browser.answer.outcome.as_str(), browser.reason), ("error", error.to_string()), "{name}");
        if fuel_is_the_modules {
            assert_eq!(browser.answer.fuel_used, native.fuel_used, "{name}: the fuel at the end");
        }
    }
}

#[test]
fn every_engine_and_cpu_computes_the_same_archive_and_fuel() {
    let scratch = tempfile::tempdir().unwrap();
    let mut engines: Vec<(String, Client)> = vec![("wasmtime, x86_64".into(), Client::native(&client_binary()))];
    for target in cross_targets() {
        engines.push((format!("wasmtime, {target} under qemu"), under_qemu(&target, cross_client(&target))));
    }
    if fuller_run_targets().iter().any(|target| target == WINDOWS) {
        engines.push(("wasmtime, x86_64 Windows under wine".into(), windows_client(scratch.path())));
    } else {
        eprintln!("the Windows client under wine runs in the fuller run: WASMGRID_CROSS_TARGETS={WINDOWS}");
    }
    for workload in workloads(scratch.path()) {
        let (reference, error) = in_client(&engines[0].1, &workload, scratch.path());
        assert_eq!(reference.outcome, "success", "{}: {reference:?} {error}", workload.name);
        assert!(reference.fuel_used > 0);
        for (engine, command) in &engines[1..] {
            if command.windows_paths && workload.host_errors {
                continue;
            }
            let (answer, error) = in_client(command, &workload, scratch.path());
            assert_eq!(answer, reference, "{} under {engine}: {error}", workload.name);
        }
        let browser = in_browser_runtime(&workload, FUEL, RunLimits::DEFAULT.memory_bytes, scratch.path());
        assert_eq!(
            browser.answer, reference,
            "{} in the browser's runtime under V8: {}",
            workload.name, browser.reason
        );
    }
}

/// The sandbox's own test suite (the hostile corpus, the determinism probe, random modules,
/// pausing in place, idle priority) cross-built for aarch64 and run under qemu-user: the
/// sandbox keeps its contract on the other CPU volunteers have most, not only its answers.
#[test]
fn the_sandbox_suite_passes_on_aarch64_under_qemu() {
    let target = AARCH64;
    let triple = gnu_triple(target);
    let sandbox_tests = &aarch64_build().sandbox_tests;
    assert!(!sandbox_tests.is_empty(), "the sandbox's tests were not built");
    let mut passed = 0;
    for program in sandbox_tests {
        let output = Command::new("qemu-aarch64")
            .arg("-L")
            .arg(format!("/usr/{triple}"))
            .arg(program)
            // Where `cargo test` would run it.
            .current_dir(workspace().join("sandbox"))
            .env("CARGO_MANIFEST_DIR", workspace().join("sandbox"))
            // qemu-user keeps the memory of every module instance the process ever had (about
            // 80 MiB each): the random modules' differential run takes 20 modules here, not 300.
            .env("WASMGRID_RANDOM_MODULES", "20")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "the sandbox's tests in {} failed on {target} under qemu:\n{stdout}\n{stderr}",
            program.display()
        );
        passed += stdout
            .lines()
            .filter_map(|line| line.strip_prefix("test result: ok. "))
            .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
            .sum::<usize>();
    }
    eprintln!("{passed} sandbox tests passed on {target} under qemu");
    assert!(passed > 40, "only {passed} tests ran, of {sandbox_tests:?}");
}
