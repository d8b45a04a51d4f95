//! `mandelbrot-inputs --out FILE.jsonl [--width 4096] [--height 4096] [--tile 512]
//! [--iterations 1000]`: writes a batch of mandelbrot work units in the jobs format (see
//! `workunits/README.md`), one line per tile of the image, named `tile-RRRR-CCCC` (row,
//! column), which is what `mandelbrot-stitch` expects of the results.

use std::fmt::Write as _;
use std::process::ExitCode;

use inputs_cli::Options;

fn main() -> ExitCode {
    inputs_cli::main("mandelbrot-inputs", run)
}

fn run() -> Result<(), String> {
    const USAGE: &str =
        "usage: mandelbrot-inputs --out FILE.jsonl [--width 4096] [--height 4096] [--tile 512] [--iterations 1000]";
    let options = Options::parse(&["--out", "--width", "--height", "--tile", "--iterations"], USAGE)?;
    let out = options.required_path("--out")?;
    let width: u32 = options.number("--width", 4096)?;
    let height: u32 = options.number("--height", 4096)?;
    let size: u32 = options.number("--tile", 512)?;
    let iterations: u32 = options.number("--iterations", 1000)?;
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
    inputs_cli::write_file(&out, jobs)?;
    println!("{} jobs ({rows} rows of {columns} tiles) in {}", u64::from(rows) * u64::from(columns), out.display());
    Ok(())
}
