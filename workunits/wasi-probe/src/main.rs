//! `wasi-probe`: uses the parts of WASI preview 1 a work unit may use, the way Rust's
//! standard library uses them, and prints what it saw; then leaves output files whose names
//! stretch the output archive's headers (long, nested, non-ASCII).
//!
//! The differential tests run it in the native client and in the browser volunteer's runtime
//! (`web/static/contribute/`): both must print the same bytes, report the same fuel and pack
//! the same archive. It prints nothing that differs between two native hosts (inode numbers,
//! time stamps, the order of directory entries), so any difference is an engine's.
//!
//! Run it with `/input` holding `numbers.txt`, standard input `hello`, and the arguments
//! `alpha β`; it exits 0.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() {
    environment();
    inputs();
    scratch_files();
    directories();
    refusals();
    descriptors();
    randomness_and_time();
    many_entries();
    outputs();
    println!("done");
}

fn show<T: std::fmt::Debug>(label: &str, result: io::Result<T>) {
    match result {
        Ok(value) => println!("{label}: ok {value:?}"),
        Err(error) => println!("{label}: errno {:?}", error.raw_os_error()),
    }
}

fn environment() {
    println!("args: {:?}", std::env::args().collect::<Vec<_>>());
    println!("environment variables: {}", std::env::vars().count());
    #[cfg(target_os = "wasi")]
    {
        // An empty read of standard input while bytes are left.
        let mut read = 0usize;
        let empty = [0usize, 0usize];
        // SAFETY: one iovec of length 0, a valid place for the count.
        let errno = unsafe { raw::fd_read(0, empty.as_ptr(), 1, &mut read) };
        println!("empty read of stdin: {errno} {read}");
    }
    let mut stdin = Vec::new();
    show("stdin", io::stdin().read_to_end(&mut stdin).map(|_| String::from_utf8_lossy(&stdin).into_owned()));
    show("current dir", std::env::current_dir());
}

/// A directory's entries, without their order, which is the host file system's: how many,
/// and a sum of their names' hashes. Nothing here depends on the order, not even the fuel
/// spent (each entry costs the same whenever it comes), so every engine agrees.
fn entries(dir: &str) -> io::Result<(usize, u64)> {
    let mut count = 0;
    let mut digest = 0u64;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        // FNV-1a.
        let hash = name.as_encoded_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
        digest = digest.wrapping_add(hash);
        count += 1;
    }
    Ok((count, digest))
}

fn inputs() {
    show("input entries", entries("/input"));
    show("input numbers", fs::read_to_string("/input/numbers.txt"));
    show("input size", fs::metadata("/input/numbers.txt").map(|meta| (meta.len(), meta.is_file())));
    show("input is a directory", fs::metadata("/input").map(|meta| meta.is_dir()));
    show("truncate an input", File::open("/input/numbers.txt").and_then(|file| file.set_len(1)));
    show("write to input", fs::write("/input/numbers.txt", b"changed"));
    show("create in input", fs::write("/input/new.txt", b"new"));
    show("mkdir in input", fs::create_dir("/input/dir"));
    show("remove from input", fs::remove_file("/input/numbers.txt"));
    show("rename in input", fs::rename("/input/numbers.txt", "/input/moved.txt"));
    show("missing input", fs::read("/input/missing.txt"));
}

fn scratch_files() {
    show("write", fs::write("/scratch/a.txt", b"first line\n"));
    show(
        "append",
        OpenOptions::new().append(true).open("/scratch/a.txt").and_then(|mut file| file.write_all(b"second line\n")),
    );
    show("read back", fs::read_to_string("a.txt"));
    let seeks = (|| {
        let mut file = OpenOptions::new().read(true).write(true).open("a.txt")?;
        let end = file.seek(SeekFrom::End(0))?;
        let back = file.seek(SeekFrom::Current(-5))?;
        let mut tail = String::new();
        file.read_to_string(&mut tail)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(b"FIRST")?;
        let before_start = file.seek(SeekFrom::Current(-100)).map_err(|error| error.raw_os_error());
        Ok::<_, io::Error>((end, back, tail, before_start))
    })();
    show("seeks", seeks);
    show("after overwrite", fs::read_to_string("a.txt"));
    show(
        "truncate and extend",
        OpenOptions::new().write(true).open("a.txt").and_then(|file| {
            file.set_len(3)?;
            file.set_len(6)?;
            Ok(file.metadata()?.len())
        }),
    );
    show("after set_len", fs::read("a.txt"));
    show("create_new on existing", File::create_new("a.txt"));
    show("write to a file opened to read", File::open("a.txt").and_then(|mut file| file.write_all(b"x")));
    show("truncate a file opened to read", File::open("a.txt").and_then(|file| file.set_len(1)));
    show("read a write-only file", File::create("w.txt").and_then(|mut file| file.read(&mut [0; 4])));
    show("a file as a directory", fs::read("a.txt/"));
    show("a path through a file", fs::read("a.txt/b"));
    show("missing file", fs::read("missing.txt"));
    show("empty path", fs::read(""));
    show("copy", fs::copy("a.txt", "copy.txt"));
    #[cfg(target_os = "wasi")]
    {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new().read(true).write(true).open("copy.txt").unwrap();
        let fd = file.as_raw_fd() as u32;
        let data = *b"zz";
        let mut buffer = [0u8; 4];
        let (mut written, mut read) = (0usize, 0usize);
        // SAFETY: each iovec names a live buffer of its length, the results valid places.
        let errnos = unsafe {
            let write_iovec = [data.as_ptr() as usize, data.len()];
            let read_iovec = [buffer.as_mut_ptr() as usize, buffer.len()];
            (
                raw::fd_pwrite(fd, write_iovec.as_ptr(), 1, 1, &mut written),
                raw::fd_pread(fd, read_iovec.as_ptr(), 1, 0, &mut read),
                raw::fd_pwrite(1, write_iovec.as_ptr(), 1, 0, &mut written),
            )
        };
        println!("pwrite and pread: {errnos:?} {written} {read} {buffer:?}");

        // A read at an offset larger than one stream read (64 KiB in wasmtime-wasi).
        fs::write("large.bin", vec![7u8; 200_000]).unwrap();
        let large = File::open("large.bin").unwrap();
        let mut buffer = vec![0u8; 150_000];
        let read_iovec = [buffer.as_mut_ptr() as usize, buffer.len()];
        // SAFETY: the iovec names a live buffer of its length, the count a valid place.
        let errno = unsafe { raw::fd_pread(large.as_raw_fd() as u32, read_iovec.as_ptr(), 1, 1000, &mut read) };
        println!("a large pread: {errno} {read}");
        drop(large);
        fs::remove_file("large.bin").unwrap();
    }
    show("remove", fs::remove_file("w.txt"));
    show("remove again", fs::remove_file("w.txt"));
}

fn directories() {
    show("mkdir nested", fs::create_dir_all("d1/d2/d3"));
    show("mkdir existing", fs::create_dir("d1"));
    show("write nested", fs::write("d1/d2/d3/f.txt", b"deep"));
    show("list", entries("d1/d2"));
    show("rename file up", fs::rename("d1/d2/d3/f.txt", "d1/g.txt"));
    show("rename over a file", fs::write("d1/h.txt", b"h").and_then(|()| fs::rename("d1/g.txt", "d1/h.txt")));
    show("renamed content", fs::read_to_string("d1/h.txt"));
    show("rename a dir into itself", fs::rename("d1/d2", "d1/d2/d3/d4"));
    show("rename a file over a dir", fs::rename("d1/h.txt", "d1/d2"));
    show("rename a dir over a file", fs::rename("d1/d2", "d1/h.txt"));
    show("rename a dir", fs::rename("d1/d2", "d1/moved"));
    show("remove a non-empty dir", fs::remove_dir("d1"));
    show("remove a dir as a file", fs::remove_file("d1/moved"));
    show("remove a file as a dir", fs::remove_dir("d1/h.txt"));
    show("remove a dir", fs::remove_dir("d1/moved/d3"));
    show("list after", entries("d1"));
    show("metadata of a dir", fs::metadata("d1").map(|meta| (meta.is_dir(), meta.is_file())));
    show("read a dir", fs::read("d1"));
    show("dot paths", fs::read_to_string("./d1/./h.txt"));
    show("up and down", fs::read_to_string("d1/moved/../h.txt"));
    show("remove_dir_all", fs::create_dir_all("tree/a/b").and_then(|()| fs::remove_dir_all("tree")));
}

fn refusals() {
    show("escape with ..", fs::read("../etc/passwd"));
    show("escape from input", fs::read("/input/../scratch/a.txt"));
    show("absolute elsewhere", fs::read("/etc/passwd"));
    show("root", fs::read_dir("/").map(|_| ()));
    show("long name", fs::write("x".repeat(256), b"x"));
    show("name of 255 bytes", fs::write("y".repeat(255), b"y").and_then(|()| fs::remove_file("y".repeat(255))));
}

#[cfg(target_os = "wasi")]
mod raw {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub fn random_get(buffer: *mut u8, length: usize) -> u16;
        pub fn fd_fdstat_get(fd: u32, stat: *mut u8) -> u16;
        pub fn fd_prestat_get(fd: u32, prestat: *mut u8) -> u16;
        pub fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u16;
        pub fn clock_res_get(id: u32, resolution: *mut u64) -> u16;
        pub fn fd_seek(fd: u32, offset: i64, whence: u8, position: *mut u64) -> u16;
        pub fn sched_yield() -> u16;
        pub fn fd_pwrite(fd: u32, iovs: *const usize, count: usize, offset: u64, written: *mut usize) -> u16;
        pub fn fd_pread(fd: u32, iovs: *const usize, count: usize, offset: u64, read: *mut usize) -> u16;
        pub fn fd_read(fd: u32, iovs: *const usize, count: usize, read: *mut usize) -> u16;
    }
}

fn descriptors() {
    use std::os::fd::AsRawFd;
    let opened: Vec<File> = ["a.txt", "copy.txt", "d1/h.txt"].iter().map(|name| File::open(name).unwrap()).collect();
    println!("descriptors: {:?}", opened.iter().map(AsRawFd::as_raw_fd).collect::<Vec<_>>());
    let mut opened = opened.into_iter();
    let (first, second, third) = (opened.next().unwrap(), opened.next().unwrap(), opened.next().unwrap());
    drop(first);
    drop(second);
    let reopened: Vec<File> = ["a.txt", "copy.txt"].iter().map(|name| File::open(name).unwrap()).collect();
    println!("reused: {:?}", reopened.iter().map(AsRawFd::as_raw_fd).collect::<Vec<_>>());
    drop(third);
    #[cfg(target_os = "wasi")]
    for fd in 0..8u32 {
        let mut stat = [0u8; 24];
        let mut prestat = [0u8; 8];
        // SAFETY: the buffers are as large as the calls write.
        let (stat_errno, prestat_errno) =
            unsafe { (raw::fd_fdstat_get(fd, stat.as_mut_ptr()), raw::fd_prestat_get(fd, prestat.as_mut_ptr())) };
        println!("fd {fd}: fdstat {stat_errno} {stat:?} prestat {prestat_errno} {prestat:?}");
    }
    #[cfg(target_os = "wasi")]
    {
        let mut position = 0u64;
        // SAFETY: `position` is a valid place for the result.
        let (stdin_seek, directory_seek) =
            unsafe { (raw::fd_seek(0, 0, 1, &mut position), raw::fd_seek(4, 0, 0, &mut position)) };
        println!("seek stdin: {stdin_seek}, seek a directory: {directory_seek}");
    }
}

fn randomness_and_time() {
    #[cfg(target_os = "wasi")]
    {
        let mut bytes = [0u8; 40];
        // SAFETY: the buffer holds 40 bytes.
        let errno = unsafe { raw::random_get(bytes.as_mut_ptr(), bytes.len()) };
        println!("random: {errno} {bytes:?}");
        for clock in 0..4 {
            let (mut time, mut resolution) = (0u64, 0u64);
            // SAFETY: both are valid places for the results.
            let errnos = unsafe { (raw::clock_time_get(clock, 1, &mut time), raw::clock_res_get(clock, &mut resolution)) };
            println!("clock {clock}: {errnos:?} {time} {resolution}");
        }
        // SAFETY: no arguments.
        println!("yield: {}", unsafe { raw::sched_yield() });
    }
    let map: HashMap<u32, u32> = (0..16).map(|i| (i, i * i)).collect();
    println!("hash map order: {:?}", map.keys().collect::<Vec<_>>());
    println!("wall clock: {:?}", SystemTime::now().duration_since(UNIX_EPOCH));
    let start = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(2));
    println!("monotonic clock after a sleep: {:?}", start.elapsed());
}

fn many_entries() {
    show("make many", fs::create_dir("many"));
    for i in 0..150 {
        fs::write(format!("many/entry-with-a-rather-long-name-{i:04}"), i.to_string()).unwrap();
    }
    println!("many: {:?}", entries("many").unwrap());
    fs::remove_dir_all("many").unwrap();
}

fn outputs() {
    let long_dir = format!("out/{}", "long-directory-name-".repeat(4));
    fs::create_dir_all(&long_dir).unwrap();
    // Fits a ustar header only split between its prefix and name fields.
    fs::write(format!("{long_dir}/{}.txt", "n".repeat(60)), b"split").unwrap();
    // Too long for that: a GNU long-name entry.
    fs::write(format!("{long_dir}/{}.txt", "m".repeat(120)), b"long").unwrap();
    let deep = format!("out/{}", ["deeper-and-deeper"; 12].join("/"));
    fs::create_dir_all(&deep).unwrap();
    fs::write(format!("{deep}/{}", "é".repeat(40)), "non-ASCII at the cut").unwrap();
    fs::write("out/été.txt", "summer").unwrap();
    fs::write("out/😀.txt", "emoji").unwrap();
    fs::write("out/\u{e000}.txt", "private use").unwrap();
    fs::write("out/Z", "upper").unwrap();
    fs::write("out/empty", "").unwrap();
    fs::write("out/big.bin", (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    fs::write("checkpoint", "not output").unwrap();
    fs::write("progress", "0.5").unwrap();
    print!("no newline at the end");
}
