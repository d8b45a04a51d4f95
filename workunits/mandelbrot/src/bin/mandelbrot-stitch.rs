//! `mandelbrot-stitch RESULTS_DIR OUT.png`: puts the tiles of a finished batch back together.
//! Reads the PGM tile in every `RESULTS_DIR/tile-RRRR-CCCC/stdout` (the validated outputs,
//! one directory per work unit), places each at its row and column, and writes the whole
//! image as one grey PNG. Missing tiles are an error that names them.
//!
//! The extent of the image is taken from the tiles present, so a batch missing its whole
//! last row or column cannot be told from a smaller image.

use std::collections::BTreeMap;
use std::io::{BufWriter, ErrorKind};
use std::path::Path;
use std::process::ExitCode;

use mandelbrot::Grey;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mandelbrot-stitch: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [results, out] = args.as_slice() else {
        return Err("usage: mandelbrot-stitch RESULTS_DIR OUT.png".into());
    };
    let (results, out) = (Path::new(results), Path::new(out));
    let mut tiles = BTreeMap::new();
    let entries = results.read_dir().map_err(|error| format!("cannot read {}: {error}", results.display()))?;
    for entry in entries {
        let entry = entry.map_err(|error| format!("cannot read {}: {error}", results.display()))?;
        let Some(key) = entry.file_name().to_str().and_then(mandelbrot::parse_tile_name) else {
            continue;
        };
        let path = entry.path().join("stdout");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // A work unit that produced no output is a missing tile, named as such below.
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let tile = mandelbrot::parse_pgm(&bytes).map_err(|error| format!("{}: {error}", path.display()))?;
        tiles.insert(key, tile);
    }
    if tiles.is_empty() {
        return Err(format!("no tile-RRRR-CCCC/stdout in {}", results.display()));
    }
    let image = mandelbrot::stitch(&tiles)?;
    write_png(&image, out).map_err(|error| format!("cannot write {}: {error}", out.display()))?;
    println!("{} tiles stitched into a {}x{} image: {}", tiles.len(), image.width, image.height, out.display());
    Ok(())
}

fn write_png(image: &Grey, path: &Path) -> Result<(), png::EncodingError> {
    let file = std::fs::File::create(path)?;
    encode_png(image, BufWriter::new(file))
}

fn encode_png(image: &Grey, sink: impl std::io::Write) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(sink, image.width, image.height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&image.pixels)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_decodes_to_the_same_pixels() {
        let image = Grey { width: 3, height: 2, pixels: vec![0, 10, 20, 30, 40, 255] };
        let mut bytes = Vec::new();
        encode_png(&image, &mut bytes).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (3, 2, png::ColorType::Grayscale));
        assert_eq!(&pixels[..info.buffer_size()], image.pixels);
    }
}
