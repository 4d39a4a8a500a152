//! ITU-T G.711 μ-law and A-law companding (i16 linear <-> u8 on the wire).
//!
//! The bit manipulation follows the ITU-T G.191 reference implementation (`g711.c`), so our
//! output matches other conforming stacks bit for bit. Decoding uses tables built at compile
//! time. Encoding has two forms that give the same bytes: [`ulaw_encode`] / [`alaw_encode`]
//! (the reference bit manipulation, a few shifts per sample) and the frame encoder
//! [`encode`], which looks codes up in tables indexed by the bits the quantiser reads
//! (14 for μ-law, 13 for A-law; 16 KiB + 4 KiB built at compile time). The table form is
//! what the media workers run for every sent packet.

use super::codec::Codec;

/// μ-law code of linear 0: what a silent μ-law frame is filled with.
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code of linear 0 (it decodes to +8: A-law has no exact zero).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Encodes one linear sample to μ-law (the 14 most significant bits are used).
pub const fn ulaw_encode(sample: i16) -> u8 {
    let x = sample as i32;
    // One's complement for negatives keeps the quantiser symmetric (G.191).
    let mut magnitude = if x < 0 { (!x) >> 2 } else { x >> 2 } + 33;
    if magnitude > 0x1FFF {
        magnitude = 0x1FFF;
    }
    let mut segment = 1;
    let mut i = magnitude >> 6;
    while i != 0 {
        segment += 1;
        i >>= 1;
    }
    let high = 8 - segment;
    let low = 0x0F - ((magnitude >> segment) & 0x0F);
    let code = ((high << 4) | low) as u8;
    if x >= 0 {
        code | 0x80
    } else {
        code
    }
}

/// Decodes one μ-law code to linear.
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TABLE[usize::from(code)]
}

/// Encodes one linear sample to A-law (the 13 most significant bits are used).
pub const fn alaw_encode(sample: i16) -> u8 {
    let x = sample as i32;
    let mut ix = if x < 0 { (!x) >> 4 } else { x >> 4 };
    if ix > 15 {
        let mut exponent = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exponent += 1;
        }
        ix -= 16;
        ix += exponent << 4;
    }
    if x >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

/// Decodes one A-law code to linear.
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[usize::from(code)]
}

/// The byte a silent frame is made of for `codec`.
pub fn silence_byte(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => ULAW_SILENCE,
        Codec::Pcma => ALAW_SILENCE,
    }
}

/// Encodes `samples` with `codec`, appending one byte per sample to `out`.
pub fn encode(codec: Codec, samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len());
    match codec {
        Codec::Pcmu => out.extend(samples.iter().map(|&s| ulaw_lookup(s))),
        Codec::Pcma => out.extend(samples.iter().map(|&s| alaw_lookup(s))),
    }
}

/// Encodes `samples` into `out` (same length), without allocating.
pub fn encode_into(codec: Codec, samples: &[i16], out: &mut [u8]) {
    match codec {
        Codec::Pcmu => {
            for (o, &s) in out.iter_mut().zip(samples) {
                *o = ulaw_lookup(s);
            }
        }
        Codec::Pcma => {
            for (o, &s) in out.iter_mut().zip(samples) {
                *o = alaw_lookup(s);
            }
        }
    }
}

/// Decodes `payload` into `out` (same length), without allocating.
pub fn decode_into(codec: Codec, payload: &[u8], out: &mut [i16]) {
    let table = match codec {
        Codec::Pcmu => &ULAW_TABLE,
        Codec::Pcma => &ALAW_TABLE,
    };
    for (o, &b) in out.iter_mut().zip(payload) {
        *o = table[usize::from(b)];
    }
}

#[inline]
fn ulaw_lookup(s: i16) -> u8 {
    // The quantiser reads `s >> 2` (14 bits, sign included).
    ULAW_ENCODE[((s >> 2) as u16 & 0x3FFF) as usize]
}

#[inline]
fn alaw_lookup(s: i16) -> u8 {
    // The quantiser reads `s >> 4` (12 bits, sign included).
    ALAW_ENCODE[((s >> 4) as u16 & 0x0FFF) as usize]
}

static ULAW_ENCODE: [u8; 16384] = build_ulaw_encoder();
static ALAW_ENCODE: [u8; 4096] = build_alaw_encoder();

const fn build_ulaw_encoder() -> [u8; 16384] {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        // Index i holds the 14-bit two's complement value of s >> 2.
        let v = if i >= 8192 {
            i as i32 - 16384
        } else {
            i as i32
        };
        t[i] = ulaw_encode((v << 2) as i16);
        i += 1;
    }
    t
}

const fn build_alaw_encoder() -> [u8; 4096] {
    let mut t = [0u8; 4096];
    let mut i = 0;
    while i < 4096 {
        let v = if i >= 2048 { i as i32 - 4096 } else { i as i32 };
        t[i] = alaw_encode((v << 4) as i16);
        i += 1;
    }
    t
}

/// Decodes `payload` with `codec`, appending one sample per byte to `out`.
pub fn decode(codec: Codec, payload: &[u8], out: &mut Vec<i16>) {
    let table = match codec {
        Codec::Pcmu => &ULAW_TABLE,
        Codec::Pcma => &ALAW_TABLE,
    };
    out.reserve(payload.len());
    out.extend(payload.iter().map(|&b| table[usize::from(b)]));
}

const ULAW_TABLE: [i16; 256] = build_ulaw_table();
const ALAW_TABLE: [i16; 256] = build_alaw_table();

const fn ulaw_expand(code: u8) -> i16 {
    let sign: i32 = if code < 0x80 { -1 } else { 1 };
    let inverted = !code as i32;
    let exponent = (inverted >> 4) & 0x07;
    let segment = exponent + 1;
    let mantissa = inverted & 0x0F;
    let step = 4 << segment;
    (sign * ((0x80 << exponent) + step * mantissa + step / 2 - 4 * 33)) as i16
}

const fn alaw_expand(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7F) as i32;
    let exponent = ix >> 4;
    let mut mantissa = ix & 0x0F;
    if exponent > 0 {
        mantissa += 16;
    }
    mantissa = (mantissa << 4) + 0x08;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    (if code > 127 { mantissa } else { -mantissa }) as i16
}

const fn build_ulaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_expand(i as u8);
        i += 1;
    }
    table
}

const fn build_alaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_expand(i as u8);
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_reference_values() {
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0x7E), -8);
        assert_eq!(ulaw_decode(0xEF), 132);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_encode(-1), 0x7F);
    }

    #[test]
    fn alaw_reference_values() {
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_decode(0xD4), 24);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn table_encoders_match_the_reference_for_every_sample() {
        let mut out = [0u8; 1];
        for s in i16::MIN..=i16::MAX {
            encode_into(Codec::Pcmu, &[s], &mut out);
            assert_eq!(out[0], ulaw_encode(s), "mu-law {s}");
            encode_into(Codec::Pcma, &[s], &mut out);
            assert_eq!(out[0], alaw_encode(s), "A-law {s}");
        }
    }

    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            let lin = ulaw_decode(code);
            // 0x7F is μ-law's "negative zero"; it re-encodes as the positive zero 0xFF.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(ulaw_encode(lin), expected, "ulaw code {code:#04x}");
            assert_eq!(
                alaw_encode(alaw_decode(code)),
                code,
                "alaw code {code:#04x}"
            );
        }
    }

    #[test]
    fn quantisation_is_monotonic_and_bounded() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for x in i16::MIN..=i16::MAX {
            let u = ulaw_decode(ulaw_encode(x));
            let a = alaw_decode(alaw_encode(x));
            assert!(u >= prev_u && a >= prev_a, "not monotonic at {x}");
            prev_u = u;
            prev_a = a;
            // Half the top-segment step (1024), or the clipping above the largest code.
            let bound = 644;
            assert!(
                (i32::from(u) - i32::from(x)).abs() <= bound,
                "ulaw error at {x}"
            );
            assert!(
                (i32::from(a) - i32::from(x)).abs() <= bound,
                "alaw error at {x}"
            );
            // Small signals keep small errors (the point of companding).
            if (-256..256).contains(&x) {
                assert!((i32::from(u) - i32::from(x)).abs() <= 8, "ulaw small {x}");
                assert!((i32::from(a) - i32::from(x)).abs() <= 16, "alaw small {x}");
            }
        }
    }

    #[test]
    fn frame_helpers_append() {
        let samples: Vec<i16> = (0..160)
            .map(|i| ((i * 397) % 20000 - 10000) as i16)
            .collect();
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut wire = vec![0x42];
            encode(codec, &samples, &mut wire);
            assert_eq!(wire.len(), 161);
            assert_eq!(wire[0], 0x42);
            let mut back = Vec::new();
            decode(codec, &wire[1..], &mut back);
            assert_eq!(back.len(), 160);
            for (x, y) in samples.iter().zip(&back) {
                assert!(
                    (i32::from(*x) - i32::from(*y)).abs() <= 512,
                    "{codec:?} {x} {y}"
                );
            }
        }
        let mut silent = Vec::new();
        encode(Codec::Pcmu, &[0; 4], &mut silent);
        encode(Codec::Pcma, &[0; 4], &mut silent);
        assert_eq!(
            silent,
            [
                [silence_byte(Codec::Pcmu); 4],
                [silence_byte(Codec::Pcma); 4]
            ]
            .concat()
        );
    }
}
