//! PNG output and ComfyUI's save-path naming.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes a solid `width`x`height` RGB PNG of `color` (0xRRGGBB), row by row.
pub fn write_solid_png(path: &Path, width: u32, height: u32, color: u32) -> std::io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let mut enc = png::Encoder::new(file, width.max(1), height.max(1));
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let writer = enc.write_header().map_err(std::io::Error::other)?;
    let mut stream = writer.into_stream_writer().map_err(std::io::Error::other)?;
    let px = [(color >> 16) as u8, (color >> 8) as u8, color as u8];
    let row: Vec<u8> = px.iter().copied().cycle().take(width.max(1) as usize * 3).collect();
    for _ in 0..height.max(1) {
        stream.write_all(&row)?;
    }
    stream.finish().map_err(std::io::Error::other)?;
    Ok(())
}

/// A small valid PNG (8x8 grey), for tests and graphs whose image is not known.
pub fn small_png_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 8, 8);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        if let Ok(mut w) = enc.write_header() {
            let _ = w.write_image_data(&[128u8; 8 * 8 * 3]);
        }
    }
    out
}

/// ComfyUI's `get_save_image_path` counter: one more than the highest `{filename}_NNNNN_` in `dir`.
pub fn next_counter(dir: &Path, filename: &str) -> u64 {
    let mut max = 0u64;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 1;
    };
    let plen = filename.chars().count();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let chars: Vec<char> = name.chars().collect();
        if chars.len() <= plen {
            continue;
        }
        let prefix: String = chars[..plen].iter().collect();
        if prefix != filename || chars[plen] != '_' {
            continue;
        }
        let rest: String = chars[plen + 1..].iter().collect();
        let digits = rest.split('_').next().unwrap_or("").parse::<u64>().unwrap_or(0);
        max = max.max(digits);
    }
    max + 1
}
