//! `wasmgrid exec`: a scientist runs a module as a volunteer would, and sees what the
//! volunteer would report (outcome, fuel, output hash), what it would earn, and the output
//! itself, unpacked; a module the server would refuse is refused here, with the server's
//! reason, since both run the same check.

use std::path::Path;

use serde_json::Value;
use wasmgrid_sandbox::output;

use crate::harness::{Volunteer, example_module, run_directly, workunit};

/// `wasmgrid exec --json` of `module` with `flags`; the report and whether it exited 0.
async fn exec(module: &Path, flags: &[&str], args: &[&str]) -> (Value, bool) {
    let volunteer = Volunteer::unattached();
    let mut all: Vec<&str> = vec!["exec", module.to_str().unwrap(), "--json"];
    all.extend(flags);
    all.push("--");
    all.extend(args);
    let output = volunteer.command(&all).output().await.unwrap();
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stderr)));
    (report, output.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_the_example_apps_as_volunteers_do_and_unpacks_their_output() {
    for (app, args) in [
        ("primes", &["1", "200000"][..]),
        ("mandelbrot", &["256", "256", "64", "1", "1", "500"]),
        ("nbody", &["16", "2000", "1"]),
    ] {
        let module = example_module(app);
        let out = tempfile::tempdir().unwrap();
        let (report, succeeded) = exec(&module, &["--seed", "7", "--output", out.path().to_str().unwrap()], args).await;
        assert!(succeeded, "{app}: {report:#}");
        assert_eq!(report["outcome"], "success", "{app}: {report:#}");

        // The figures a volunteer would report, and a validated replica's credit.
        let fuel = report["fuel_used"].as_u64().unwrap();
        assert!(fuel > 0);
        assert_eq!(report["credit"].as_f64().unwrap(), fuel as f64 / 1e9);
        let (stdout, files) = {
            let module = module.clone();
            let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_directly(&module, &args, b"")
            })
            .await
            .unwrap()
        };
        let scratch = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            std::fs::write(scratch.path().join(name), bytes).unwrap();
        }
        let (expected, _) = output::pack(&stdout, scratch.path(), &scratch.path().join("..out.tar"), 1 << 30).unwrap();
        assert_eq!(report["output_sha256"], expected.to_hex(), "{app}: the hash a volunteer would report");

        assert_eq!(report["output_archive"], out.path().join("output.tar").to_str().unwrap());
        let unpacked = Path::new(report["output_dir"].as_str().unwrap());
        assert_eq!(unpacked, out.path().join("output"));
        assert_eq!(std::fs::read(unpacked.join("stdout")).unwrap(), stdout, "{app}: standard output, unpacked");
    }
}

#[tokio::test]
async fn exec_prints_the_outcome_fuel_credit_hash_time_and_where_the_output_is() {
    let volunteer = Volunteer::unattached();
    let module = example_module("primes");
    let output = volunteer.command(&["exec", module.to_str().unwrap(), "--", "1", "1000"]).output().await.unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for line in
        ["outcome: success", "fuel used: ", "credit once validated: ", "run time: ", "output: ", "unpacked in: "]
    {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}

/// One module of the hostile corpus, with the flags it runs with and what `exec` must say.
struct Hostile {
    file: &'static str,
    flags: &'static [&'static str],
    outcome: &'static str,
    error: &'static str,
}

const HOSTILE: &[Hostile] = &[
    Hostile {
        file: "infinite_loop.wat",
        flags: &["--fuel", "10000000"],
        outcome: "error",
        error: "fuel limit exceeded",
    },
    Hostile {
        file: "infinite_loop.wat",
        flags: &["--timeout", "2s"],
        outcome: "error",
        error: "wall-clock time limit",
    },
    Hostile { file: "start_loop.wat", flags: &["--fuel", "10000000"], outcome: "error", error: "fuel limit exceeded" },
    Hostile { file: "sleeper.wat", flags: &["--timeout", "2s"], outcome: "error", error: "wall-clock time limit" },
    Hostile {
        file: "host_call_spinner.wat",
        flags: &["--timeout", "2s"],
        outcome: "error",
        error: "wall-clock time limit",
    },
    Hostile {
        file: "memory_bomb.wat",
        flags: &["--memory", "16MiB"],
        outcome: "error",
        error: "memory limit exceeded",
    },
    Hostile { file: "table_bomb.wat", flags: &[], outcome: "error", error: "table limit exceeded" },
    Hostile { file: "recursion.wat", flags: &[], outcome: "error", error: "stack depth limit exceeded" },
    Hostile { file: "huge_stdout.wat", flags: &[], outcome: "error", error: "output size limit exceeded" },
    Hostile {
        file: "scratch_filler.wat",
        flags: &["--scratch", "4MiB"],
        outcome: "error",
        error: "scratch disk limit",
    },
    Hostile { file: "deep_scratch.wat", flags: &["--scratch", "4MiB"], outcome: "error", error: "scratch disk limit" },
    Hostile { file: "escape.wat", flags: &[], outcome: "error", error: "exited with status" },
    Hostile { file: "trap.wat", flags: &[], outcome: "error", error: "trap: " },
    Hostile { file: "nonzero_exit.wat", flags: &[], outcome: "error", error: "exited with status 3" },
    Hostile { file: "unknown_import.wat", flags: &[], outcome: "refused", error: "env::open_socket" },
    Hostile { file: "not_a_command.wat", flags: &[], outcome: "refused", error: "_start" },
    Hostile { file: "relaxed_simd.wat", flags: &[], outcome: "refused", error: "relaxed" },
];

#[tokio::test(flavor = "multi_thread")]
async fn exec_ends_every_hostile_module_with_the_error_a_volunteer_would_report() {
    let dir = tempfile::tempdir().unwrap();
    for hostile in HOSTILE {
        let module = dir.path().join(hostile.file.replace(".wat", ".wasm"));
        std::fs::write(&module, workunit(&format!("hostile/{}", hostile.file))).unwrap();
        let (report, succeeded) = exec(&module, hostile.flags, &[]).await;
        assert!(!succeeded, "{}: exits 1 when the run fails", hostile.file);
        assert_eq!(report["outcome"], hostile.outcome, "{}: {report:#}", hostile.file);
        let error = report["error"].as_str().unwrap_or_default();
        assert!(error.contains(hostile.error), "{} {:?}: {error}", hostile.file, hostile.flags);
        assert_eq!(report["credit"], 0.0, "{}: a failed run earns nothing", hostile.file);
    }

    // What is not Wasm at all is refused as the server refuses it.
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"#!/bin/sh\nrm -rf /\n").unwrap();
    let (report, succeeded) = exec(&garbage, &[], &[]).await;
    assert!(!succeeded);
    assert_eq!(report["outcome"], "refused", "{report:#}");
    assert!(report["error"].as_str().unwrap().contains("not a usable work unit module"), "{report:#}");
}
