//! Images for the seeded data set: real PNG files of a chosen size (noise, so they do not
//! compress), written without an image library: a PNG is a signature and three chunks, and its
//! pixel data may be a zlib stream of *stored* (uncompressed) deflate blocks.

/// A valid RGB PNG of about `target_bytes`, its pixels drawn from `noise`.
pub fn noise_png(target_bytes: usize, mut noise: impl FnMut() -> u8) -> Vec<u8> {
    const WIDTH: usize = 128;
    let row = 1 + 3 * WIDTH; // filter byte + RGB pixels
    let height = (target_bytes / row).max(1);
    let mut raw = Vec::with_capacity(row * height);
    for _ in 0..height {
        raw.push(0); // filter: none
        raw.extend((0..3 * WIDTH).map(|_| noise()));
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(WIDTH as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, truecolour, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of stored deflate blocks (RFC 1950/1951).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len())); // BFINAL, BTYPE = 00 (stored)
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for byte in data {
        a = (a + u32::from(*byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_png_specification_example() {
        // CRC of "IEND" with no data is the well-known AE 42 60 82.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn images_have_the_size_asked_for_and_a_png_signature() {
        let mut x = 0u8;
        let png = noise_png(50_000, || {
            x = x.wrapping_mul(31).wrapping_add(7);
            x
        });
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!((45_000..55_000).contains(&png.len()), "{}", png.len());
        assert_eq!(crate::api::media::sniff_image_type(&png), Some("image/png"));
    }
}
