//! What this machine is, as told to the server when it registers.

use wasmgrid_protocol::api::RegisterHostRequest;

pub fn describe(name: &str) -> RegisterHostRequest {
    RegisterHostRequest {
        name: name.to_owned(),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
        memory_bytes: memory_bytes(),
        client_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Physical memory, from `/proc/meminfo`; 1 GiB where it cannot be read.
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(1 << 30)
}

/// The machine's name, for the host's default name.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "volunteer".to_owned())
}
