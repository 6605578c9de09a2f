//! PNG to grayscale PNG. Any PNG colour type and depth is read (palettes and
//! 16-bit samples are normalised to 8 bits); the output is 8-bit grayscale,
//! with the alpha channel kept when the input had one.

use std::io::Cursor;

/// Converts the PNG in `input` to a grayscale PNG. Errors are human-readable
/// and mean the input was not a PNG the decoder could read.
pub fn to_grayscale(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut decoder = png::Decoder::new(Cursor::new(input));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or("the image is too large to decode in memory")?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("cannot decode the PNG: {e}"))?;
    let pixels = &buf[..info.buffer_size()];

    let (gray, color) = match info.color_type {
        png::ColorType::Grayscale => (pixels.to_vec(), png::ColorType::Grayscale),
        png::ColorType::GrayscaleAlpha => (pixels.to_vec(), png::ColorType::GrayscaleAlpha),
        png::ColorType::Rgb => (
            pixels.chunks_exact(3).map(luma).collect(),
            png::ColorType::Grayscale,
        ),
        png::ColorType::Rgba => (
            pixels
                .chunks_exact(4)
                .flat_map(|px| [luma(px), px[3]])
                .collect(),
            png::ColorType::GrayscaleAlpha,
        ),
        // normalize_to_color8 expands palettes, so this is not expected.
        png::ColorType::Indexed => return Err("indexed PNGs are not supported".into()),
    };

    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, info.width, info.height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    writer
        .write_image_data(&gray)
        .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    writer
        .finish()
        .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    Ok(out)
}

/// ITU-R BT.601 luma, the weights most image tools use for "grayscale",
/// rounded to the nearest integer.
fn luma(rgb: &[u8]) -> u8 {
    let [r, g, b] = [rgb[0], rgb[1], rgb[2]].map(u32::from);
    ((299 * r + 587 * g + 114 * b + 500) / 1000) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(w: u32, h: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    fn decode(png_bytes: &[u8]) -> (png::ColorType, Vec<u8>) {
        let mut reader = png::Decoder::new(Cursor::new(png_bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.color_type, buf)
    }

    #[test]
    fn rgb_becomes_luma() {
        let input = encode(
            3,
            1,
            png::ColorType::Rgb,
            &[255, 0, 0, 0, 255, 0, 255, 255, 255],
        );
        let (color, data) = decode(&to_grayscale(&input).unwrap());
        assert_eq!(color, png::ColorType::Grayscale);
        assert_eq!(data, [76, 150, 255]);
    }

    #[test]
    fn alpha_is_kept() {
        let input = encode(1, 1, png::ColorType::Rgba, &[0, 0, 255, 7]);
        let (color, data) = decode(&to_grayscale(&input).unwrap());
        assert_eq!(color, png::ColorType::GrayscaleAlpha);
        assert_eq!(data, [29, 7]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(to_grayscale(b"not a png").is_err());
        assert!(to_grayscale(b"").is_err());
    }
}
