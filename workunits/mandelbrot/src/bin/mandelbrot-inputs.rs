//! `mandelbrot-inputs --out FILE.jsonl [--width 4096] [--height 4096] [--tile 512]
//! [--iterations 1000]`: writes a batch of mandelbrot work units in the jobs format (see
//! `workunits/README.md`), one line per tile of the image, named `tile-RRRR-CCCC` (row,
//! column), which is what `mandelbrot-stitch` expects of the results.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mandelbrot-inputs: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    const USAGE: &str =
        "usage: mandelbrot-inputs --out FILE.jsonl [--width 4096] [--height 4096] [--tile 512] [--iterations 1000]";
    let options = parse_options(&["--out", "--width", "--height", "--tile", "--iterations"])
        .map_err(|error| format!("{error}\n{USAGE}"))?;
    let out = PathBuf::from(options.get("--out").ok_or(USAGE)?);
    let width = number(&options, "--width", 4096)?;
    let height = number(&options, "--height", 4096)?;
    let size = number(&options, "--tile", 512)?;
    let iterations = number(&options, "--iterations", 1000)?;
    if width == 0 || height == 0 || size == 0 {
        return Err("--width, --height and --tile must be positive".into());
    }
    let (rows, columns) = (height.div_ceil(size), width.div_ceil(size));
    // Names and arguments are digits and dashes, so they need no JSON escaping.
    let mut jobs = String::new();
    for row in 0..rows {
        for column in 0..columns {
            let name = mandelbrot::tile_name(row, column);
            let args = [width, height, size, column, row, iterations].map(|number| format!("\"{number}\"")).join(", ");
            let _ = writeln!(jobs, r#"{{"name": "{name}", "args": [{args}]}}"#);
        }
    }
    if let Some(parent) = out.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    std::fs::write(&out, jobs).map_err(|error| format!("cannot write {}: {error}", out.display()))?;
    println!("{} jobs ({rows} rows of {columns} tiles) in {}", u64::from(rows) * u64::from(columns), out.display());
    Ok(())
}

/// The `--name value` options on the command line, each one of `known` and given once.
fn parse_options(known: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut options = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown argument {name:?}"));
        }
        let value = args.next().ok_or_else(|| format!("{name} needs a value"))?;
        if options.insert(name.clone(), value).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    Ok(options)
}

fn number(options: &HashMap<String, String>, name: &str, default: u32) -> Result<u32, String> {
    options.get(name).map_or(Ok(default), |text| {
        text.parse().map_err(|_| format!("{name} {text:?} is not an integer from 0 to {}", u32::MAX))
    })
}
