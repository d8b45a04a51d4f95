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

#[cfg(test)]
mod tests {
    use super::*;

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
}
