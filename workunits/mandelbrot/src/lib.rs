//! The Mandelbrot set over the classic view (real part -2.5 to 1, imaginary part centred on
//! 0, square pixels), rendered one square tile of a large image at a time.
//!
//! Only additions and multiplications of `f64`, which IEEE 754 defines to the bit, so a tile
//! is the same bytes on every machine and in Wasm or native code.

/// Which part of which image to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// Width and height of the whole image, in pixels.
    pub width: u32,
    pub height: u32,
    /// Side of a tile, in pixels; tiles at the right and bottom edges may be smaller.
    pub size: u32,
    /// Tile column and row.
    pub column: u32,
    pub row: u32,
    pub max_iterations: u32,
}

impl Tile {
    /// The tile's pixel rectangle: left, top, width, height (`None` if outside the image).
    pub fn rectangle(&self) -> Option<(u32, u32, u32, u32)> {
        let left = self.column.checked_mul(self.size)?;
        let top = self.row.checked_mul(self.size)?;
        if left >= self.width || top >= self.height {
            return None;
        }
        Some((left, top, self.size.min(self.width - left), self.size.min(self.height - top)))
    }
}

/// Escape-time iterations for every pixel of the tile, row by row.
pub fn render(tile: &Tile) -> Option<Vec<u32>> {
    let (left, top, width, height) = tile.rectangle()?;
    let scale = 3.5 / f64::from(tile.width);
    let centre_row = f64::from(tile.height) / 2.0;
    let mut iterations = Vec::with_capacity((width * height) as usize);
    for y in top..top + height {
        let imaginary = (f64::from(y) - centre_row) * scale;
        for x in left..left + width {
            let real = -2.5 + f64::from(x) * scale;
            iterations.push(escape_time(real, imaginary, tile.max_iterations));
        }
    }
    Some(iterations)
}

fn escape_time(c_re: f64, c_im: f64, max_iterations: u32) -> u32 {
    let (mut re, mut im) = (0.0f64, 0.0f64);
    for iteration in 0..max_iterations {
        let (re2, im2) = (re * re, im * im);
        if re2 + im2 > 4.0 {
            return iteration;
        }
        im = 2.0 * re * im + c_im;
        re = re2 - im2 + c_re;
    }
    max_iterations
}

/// A grey level for an escape time: points in the set are black, fast escapes dark, slow
/// escapes bright (a square-root ramp, in integers so it is exact everywhere).
pub fn shade(iterations: u32, max_iterations: u32) -> u8 {
    if iterations >= max_iterations {
        return 0;
    }
    let scaled = (u64::from(iterations) * 255 * 255) / u64::from(max_iterations.max(1));
    let mut root = 0u64;
    while (root + 1) * (root + 1) <= scaled {
        root += 1;
    }
    root.min(255) as u8
}

/// The tile as a binary PGM (P5) image.
pub fn to_pgm(tile: &Tile, iterations: &[u32]) -> Vec<u8> {
    let (_, _, width, height) = tile.rectangle().expect("rendered tiles are inside the image");
    let mut image = format!("P5\n{width} {height}\n255\n").into_bytes();
    image.extend(iterations.iter().map(|&i| shade(i, tile.max_iterations)));
    image
}

/// The name of the work unit, and so of the results directory, of the tile at `row` and
/// `column`: `tile-RRRR-CCCC`.
pub fn tile_name(row: u32, column: u32) -> String {
    format!("tile-{row:04}-{column:04}")
}

/// The row and column of a [`tile_name`] (in that form exactly, so that no two names stand
/// for one tile).
pub fn parse_tile_name(name: &str) -> Option<(u32, u32)> {
    let (row, column) = name.strip_prefix("tile-")?.split_once('-')?;
    let all_digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if !all_digits(row) || !all_digits(column) {
        return None;
    }
    let (row, column) = (row.parse().ok()?, column.parse().ok()?);
    (tile_name(row, column) == name).then_some((row, column))
}

/// A grey image, row by row, one byte a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grey {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Decodes a binary PGM image as [`to_pgm`] writes it (8 bits a pixel, no comments).
pub fn parse_pgm(bytes: &[u8]) -> Result<Grey, String> {
    // The header is four fields, each followed by one whitespace byte; the pixels follow.
    let mut fields = Vec::with_capacity(4);
    let mut rest = bytes;
    while fields.len() < 4 {
        let start = rest.iter().position(|byte| !byte.is_ascii_whitespace()).ok_or("the PGM header is cut short")?;
        rest = &rest[start..];
        let end = rest.iter().position(u8::is_ascii_whitespace).ok_or("the PGM header is cut short")?;
        fields.push(std::str::from_utf8(&rest[..end]).map_err(|_| "the PGM header is not text")?);
        rest = &rest[end + 1..];
    }
    if fields[0] != "P5" {
        return Err("not a binary PGM image (P5)".into());
    }
    let dimension = |text: &str| text.parse::<u32>().map_err(|_| format!("{text:?} is not a PGM dimension"));
    let (width, height) = (dimension(fields[1])?, dimension(fields[2])?);
    if fields[3] != "255" {
        return Err(format!("the PGM image has maximum value {}, not 255", fields[3]));
    }
    if rest.len() as u64 != u64::from(width) * u64::from(height) {
        return Err(format!("a {width}x{height} PGM image holds {} pixels", rest.len()));
    }
    Ok(Grey { width, height, pixels: rest.to_vec() })
}

/// Puts tiles back together: `tiles` maps (row, column) to the tile's image. The tile size is
/// taken from tile (0, 0), which is full-sized in every direction where it has neighbours;
/// every tile must be that size except those in the last column (narrower) and the last row
/// (shorter). The grid is as large as the highest row and column present, and a gap in it is
/// an error naming the missing tiles.
pub fn stitch(tiles: &std::collections::BTreeMap<(u32, u32), Grey>) -> Result<Grey, String> {
    let rows = tiles.keys().map(|&(row, _)| row + 1).max().ok_or("there are no tiles")?;
    let columns = tiles.keys().map(|&(_, column)| column + 1).max().unwrap_or(0);
    let missing: Vec<String> = (0..rows)
        .flat_map(|row| (0..columns).map(move |column| (row, column)))
        .filter(|key| !tiles.contains_key(key))
        .map(|(row, column)| tile_name(row, column))
        .collect();
    if !missing.is_empty() {
        const SHOWN: usize = 20;
        let mut list = missing[..missing.len().min(SHOWN)].join(", ");
        if missing.len() > SHOWN {
            list.push_str(&format!(" and {} more", missing.len() - SHOWN));
        }
        return Err(format!("{} of {} tiles missing: {list}", missing.len(), rows * columns));
    }
    let first = &tiles[&(0, 0)];
    let size = first.width.max(first.height);
    let last_width = tiles[&(0, columns - 1)].width;
    let last_height = tiles[&(rows - 1, 0)].height;
    let width = u64::from(size) * u64::from(columns - 1) + u64::from(last_width);
    let height = u64::from(size) * u64::from(rows - 1) + u64::from(last_height);
    let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(format!("a {width}x{height} image is too large"));
    };
    let mut pixels = vec![0u8; width as usize * height as usize];
    for (&(row, column), tile) in tiles {
        let expected_width = if column + 1 == columns { last_width } else { size };
        let expected_height = if row + 1 == rows { last_height } else { size };
        if (tile.width, tile.height) != (expected_width, expected_height) || tile.width == 0 || tile.height == 0 {
            return Err(format!(
                "{} is {}x{}, but tile (0, 0) makes it {expected_width}x{expected_height}",
                tile_name(row, column),
                tile.width,
                tile.height
            ));
        }
        let (left, top) = (column as usize * size as usize, row as usize * size as usize);
        for (y, line) in tile.pixels.chunks_exact(tile.width as usize).enumerate() {
            let start = (top + y) * width as usize + left;
            pixels[start..start + line.len()].copy_from_slice(line);
        }
    }
    Ok(Grey { width, height, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn points_in_and_out_of_the_set() {
        assert_eq!(escape_time(0.0, 0.0, 100), 100);
        assert_eq!(escape_time(-1.0, 0.0, 100), 100);
        assert!(escape_time(1.0, 1.0, 100) < 3);
    }

    #[test]
    fn edge_tiles_are_clipped_and_outside_tiles_refused() {
        let tile = Tile { width: 100, height: 50, size: 64, column: 1, row: 0, max_iterations: 10 };
        assert_eq!(tile.rectangle(), Some((64, 0, 36, 50)));
        assert_eq!(render(&tile).unwrap().len(), 36 * 50);
        assert_eq!(Tile { column: 2, ..tile }.rectangle(), None);
    }

    #[test]
    fn shading_is_monotonic_and_black_inside() {
        assert_eq!(shade(100, 100), 0);
        assert!(shade(1, 100) < shade(50, 100));
        assert_eq!(shade(99, 100), 253);
    }

    fn tile_image(tile: &Tile) -> Grey {
        parse_pgm(&to_pgm(tile, &render(tile).unwrap())).unwrap()
    }

    #[test]
    fn stitched_tiles_are_the_image_rendered_whole() {
        let (width, height, size) = (100, 70, 32);
        let whole = tile_image(&Tile { width, height, size: width, column: 0, row: 0, max_iterations: 50 });
        let mut tiles = BTreeMap::new();
        for row in 0..height.div_ceil(size) {
            for column in 0..width.div_ceil(size) {
                let tile = Tile { width, height, size, column, row, max_iterations: 50 };
                tiles.insert((row, column), tile_image(&tile));
            }
        }
        assert_eq!(tiles.len(), 12);
        assert_eq!(stitch(&tiles), Ok(whole));
    }

    #[test]
    fn missing_and_misshapen_tiles_are_named() {
        let tile = Tile { width: 40, height: 40, size: 16, column: 0, row: 0, max_iterations: 5 };
        let mut tiles = BTreeMap::new();
        for (row, column) in [(0, 0), (0, 1), (0, 2), (1, 0), (2, 2)] {
            tiles.insert((row, column), tile_image(&Tile { row, column, ..tile }));
        }
        assert_eq!(
            stitch(&tiles),
            Err("4 of 9 tiles missing: tile-0001-0001, tile-0001-0002, tile-0002-0000, tile-0002-0001".into())
        );
        for (row, column) in [(1, 1), (1, 2), (2, 0), (2, 1)] {
            tiles.insert((row, column), tile_image(&Tile { row, column, ..tile }));
        }
        tiles.insert((1, 1), tile_image(&Tile { size: 8, ..tile }));
        assert_eq!(stitch(&tiles), Err("tile-0001-0001 is 8x8, but tile (0, 0) makes it 16x16".into()));
    }

    #[test]
    fn tile_names_round_trip_and_only_in_their_own_form() {
        assert_eq!(tile_name(3, 12), "tile-0003-0012");
        assert_eq!(parse_tile_name("tile-0003-0012"), Some((3, 12)));
        assert_eq!(parse_tile_name("tile-12345-0000"), Some((12345, 0)));
        for name in ["tile-3-12", "tile-0003-+012", "tile-0003", "tiles-0003-0012", "tile-0003-0012.png"] {
            assert_eq!(parse_tile_name(name), None, "{name}");
        }
    }

    #[test]
    fn pgm_round_trips_and_bad_pgm_is_refused() {
        let tile = Tile { width: 5, height: 3, size: 8, column: 0, row: 0, max_iterations: 9 };
        let image = tile_image(&tile);
        assert_eq!((image.width, image.height, image.pixels.len()), (5, 3, 15));
        assert!(parse_pgm(b"P5\n5 3\n255\n").is_err());
        assert!(parse_pgm(b"P2\n1 1\n255\n\0").is_err());
        assert!(parse_pgm(b"P5\n1 1").is_err());
    }
}
