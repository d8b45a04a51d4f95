//! `mandelbrot WIDTH HEIGHT TILE_SIZE COLUMN ROW MAX_ITERATIONS`: renders one tile of a
//! WIDTH x HEIGHT image of the Mandelbrot set and writes it to standard output as a binary
//! PGM image. Without arguments the six numbers are read from standard input.

use std::io::{Read, Write};
use std::process::ExitCode;

use mandelbrot::Tile;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mandelbrot: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).map_err(|error| format!("cannot read standard input: {error}"))?;
        args = input.split_whitespace().map(str::to_owned).collect();
    }
    let numbers = args
        .iter()
        .map(|arg| arg.parse::<u32>().map_err(|_| format!("{arg:?} is not a non-negative integer")))
        .collect::<Result<Vec<u32>, String>>()?;
    let [width, height, size, column, row, max_iterations] = numbers[..] else {
        return Err("usage: mandelbrot WIDTH HEIGHT TILE_SIZE COLUMN ROW MAX_ITERATIONS".into());
    };
    if width == 0 || height == 0 || size == 0 {
        return Err("the image and the tile must not be empty".into());
    }
    let tile = Tile { width, height, size, column, row, max_iterations };
    let iterations = mandelbrot::render(&tile).ok_or("the tile lies outside the image")?;
    std::io::stdout()
        .write_all(&mandelbrot::to_pgm(&tile, &iterations))
        .map_err(|error| format!("cannot write the image: {error}"))
}
