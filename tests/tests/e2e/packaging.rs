//! The service units in `packaging/systemd/`: systemd's own checker accepts them, and the
//! client's keeps the promises the README makes to volunteers. The Debian packages that
//! carry them install with `dpkg -i` and run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::binary;

fn unit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd").join(name)
}

/// `systemd-analyze verify` on a copy of `name` whose programs are the ones just built (the
/// checker wants every `ExecStart` to exist). Returns what it printed.
fn verify(name: &str) -> (bool, String) {
    let text = std::fs::read_to_string(unit(name)).unwrap();
    // The server's path first: the client's is a prefix of it.
    let text = text
        .replace("/usr/bin/wasmgrid-server", binary("wasmgrid-server").to_str().unwrap())
        .replace("/usr/bin/wasmgrid ", &format!("{} ", binary("wasmgrid").display()));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(name);
    std::fs::write(&copy, text).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze is missing: apt-get install systemd");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

#[test]
fn systemd_accepts_the_service_units_without_a_warning() {
    for name in ["wasmgrid-client.service", "wasmgrid-server.service"] {
        let (success, printed) = verify(name);
        // The checker exits 0 on unknown keys and values out of range, and only says so.
        assert!(success && printed.trim().is_empty(), "{name}:\n{printed}");
    }
}

#[test]
fn the_checker_would_catch_a_broken_unit() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.service");
    std::fs::write(&broken, "[Service]\nExecStart=/bin/sh -c true\nNice=40\nCPUSchedulingPolicy=lowest\n").unwrap();

    let output = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&broken).output().unwrap();

    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(printed.contains("Nice priority") && printed.contains("CPU scheduling policy"), "{printed}");
}

/// The settings of a unit, `key=value` by section-less key (the last one wins, as in systemd).
fn settings(name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(unit(name))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

#[test]
fn the_client_service_runs_idle_unprivileged_and_confined() {
    let settings = settings("wasmgrid-client.service");
    let value = |key: &str| {
        settings.iter().rev().find(|(name, _)| name == key).map(|(_, value)| value.as_str()).unwrap_or_default()
    };
    for (key, expected) in [
        ("User", "wasmgrid"),
        ("StateDirectory", "wasmgrid"),
        ("Environment", "WASMGRID_DATA_DIR=/var/lib/wasmgrid"),
        ("Nice", "19"),
        ("CPUSchedulingPolicy", "idle"),
        ("CPUWeight", "idle"),
        ("IOSchedulingClass", "idle"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ] {
        assert_eq!(value(key), expected, "{key}");
    }
    // wasmtime writes machine code at run time.
    assert!(value("MemoryDenyWriteExecute").is_empty(), "a JIT cannot run with MemoryDenyWriteExecute");
}

/// One Debian package and what it must install.
struct Package {
    name: &'static str,
    binary: &'static str,
    user: &'static str,
}

/// `cargo deb` (the cargo-deb crate) packs the binaries this test run built, `dpkg -i`
/// installs each package on this machine (the test needs root, as CI has), and then its
/// program runs from /usr/bin, its system user exists, systemd's checker accepts its unit
/// where systemd looks for it, and `dpkg --purge` takes it all away again.
#[test]
fn the_debian_packages_install_with_dpkg_and_run() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let debs = tempfile::tempdir().unwrap();
    for package in [
        Package { name: "wasmgrid-client", binary: "wasmgrid", user: "wasmgrid" },
        Package { name: "wasmgrid-server", binary: "wasmgrid-server", user: "wasmgrid-server" },
    ] {
        // The binaries of this run (the dev profile): the package is what is tested here,
        // and a release build would double the time CI takes.
        binary(package.binary);
        let made = Command::new("cargo")
            .current_dir(&workspace)
            .args(["deb", "--quiet", "-p", package.name, "--profile", "dev", "--no-build", "-o"])
            .arg(debs.path())
            .output()
            .expect("cargo-deb runs: cargo install cargo-deb");
        assert!(made.status.success(), "cargo deb -p {}: {}", package.name, String::from_utf8_lossy(&made.stderr));
        let deb = String::from_utf8_lossy(&made.stdout).trim().lines().last().unwrap().to_owned();
        assert!(deb.ends_with("_amd64.deb") && Path::new(&deb).exists(), "{deb}");

        let installed = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
        assert!(installed.status.success(), "dpkg -i {deb}: {}", String::from_utf8_lossy(&installed.stderr));
        let version = Command::new(format!("/usr/bin/{}", package.binary)).arg("--version").output().unwrap();
        assert!(version.status.success());
        assert_eq!(
            String::from_utf8_lossy(&version.stdout).trim(),
            format!("{} {}", package.binary, env!("CARGO_PKG_VERSION"))
        );
        let user = Command::new("getent").args(["passwd", package.user]).output().unwrap();
        let entry = String::from_utf8_lossy(&user.stdout);
        assert!(entry.contains(&format!("/var/lib/{}", package.user)), "the postinst made the user: {entry}");
        assert!(entry.trim_end().ends_with("/usr/sbin/nologin"), "{entry}");
        let unit = format!("/usr/lib/systemd/system/{}.service", package.name);
        let checked = Command::new("systemd-analyze").args(["verify", "--man=no", &unit]).output().unwrap();
        let printed =
            format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
        assert!(checked.status.success() && printed.trim().is_empty(), "{unit}: {printed}");

        let purged = Command::new("dpkg").args(["--purge", package.name]).output().unwrap();
        assert!(purged.status.success(), "dpkg --purge {}: {}", package.name, String::from_utf8_lossy(&purged.stderr));
        assert!(!Path::new(&format!("/usr/bin/{}", package.binary)).exists());
        assert!(!Path::new(&unit).exists());
    }
}
