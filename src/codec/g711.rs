//! G.711 µ-law and A-law (ITU-T G.711).
//!
//! Both laws map a 16-bit linear sample to one byte: a sign bit, a 3-bit segment
//! (a power-of-two range) and a 4-bit step within it. The arithmetic follows the
//! classic reference implementation (Sun Microsystems' `g711.c`), so the bytes
//! match what phones and gateways send.
//!
//! The engine works in `f32` samples in [-1, 1]; the slice helpers convert with a
//! scale of 32768, the same as 16-bit PCM.

/// µ-law adds this to the magnitude so that every segment starts at a power of two.
const ULAW_BIAS: u32 = 0x84;
/// The largest biased µ-law magnitude; louder samples clip to the top code.
const ULAW_MAX: u32 = 0x7FFF;
/// Scale between the engine's float samples and 16-bit linear PCM.
const SCALE: f32 = 32768.0;

/// Encodes one 16-bit linear sample as µ-law.
pub fn ulaw_encode(s: i16) -> u8 {
    // The code is transmitted inverted (ones' complement), sign bit set for positive.
    let mask = if s < 0 { 0x7F } else { 0xFF };
    let biased = (u32::from(s.unsigned_abs()) + ULAW_BIAS).min(ULAW_MAX);
    // The bias puts the top bit at position 7 or above, so this is 0..=7.
    let segment = 24 - biased.leading_zeros();
    let step = (biased >> (segment + 3)) & 0x0F;
    // `segment` and `step` fit in 3 and 4 bits, so the value fits in a byte.
    ((segment << 4) | step) as u8 ^ mask
}

/// Decodes one µ-law byte to a 16-bit linear sample.
pub fn ulaw_decode(b: u8) -> i16 {
    ULAW_TABLE[usize::from(b)]
}

/// Encodes one 16-bit linear sample as A-law.
pub fn alaw_encode(s: i16) -> u8 {
    // A-law quantises 13 bits; the arithmetic shift keeps the sign.
    let coarse = s >> 3;
    // Even bits are inverted on the wire (0x55); the sign bit is set for positive.
    let (magnitude, mask) = if coarse >= 0 {
        (coarse.unsigned_abs(), 0xD5)
    } else {
        // -1 maps to the smallest negative step, so negatives are offset by one.
        ((coarse + 1).unsigned_abs(), 0x55)
    };
    let magnitude = u32::from(magnitude).min(0x0FFF);
    // Segments 0 and 1 share a step size; from 2 on each doubles.
    let segment = (32 - magnitude.leading_zeros()).saturating_sub(5);
    let step = (magnitude >> segment.max(1)) & 0x0F;
    ((segment << 4) | step) as u8 ^ mask
}

/// Decodes one A-law byte to a 16-bit linear sample.
pub fn alaw_decode(b: u8) -> i16 {
    ALAW_TABLE[usize::from(b)]
}

const fn ulaw_decode_slow(b: u8) -> i16 {
    let u = !b;
    let segment = (u >> 4) & 0x07;
    let t = ((((u & 0x0F) as i32) << 3) + ULAW_BIAS as i32) << segment;
    let v = if u & 0x80 != 0 {
        ULAW_BIAS as i32 - t
    } else {
        t - ULAW_BIAS as i32
    };
    v as i16
}

const fn alaw_decode_slow(b: u8) -> i16 {
    let a = b ^ 0x55;
    let segment = (a >> 4) & 0x07;
    let mut t = ((a & 0x0F) as i32) << 4;
    t = match segment {
        0 => t + 8,
        1 => t + 0x108,
        s => (t + 0x108) << (s - 1),
    };
    let v = if a & 0x80 != 0 { t } else { -t };
    v as i16
}

#[derive(Clone, Copy)]
enum TableLaw {
    Mu,
    A,
}

// Const fns cannot call through function pointers yet, hence the enum.
const fn table(law: TableLaw) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match law {
            TableLaw::Mu => ulaw_decode_slow(i as u8),
            TableLaw::A => alaw_decode_slow(i as u8),
        };
        i += 1;
    }
    t
}

static ULAW_TABLE: [i16; 256] = table(TableLaw::Mu);
static ALAW_TABLE: [i16; 256] = table(TableLaw::A);

fn to_float(s: i16) -> f32 {
    f32::from(s) / SCALE
}

fn to_linear(x: f32) -> i16 {
    // `as` saturates out-of-range values and maps NaN to 0, which is the clipping we want.
    (x * SCALE).round() as i16
}

/// Decodes µ-law bytes, appending float samples in [-1, 1] to `out`.
pub fn decode_ulaw(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(bytes.iter().map(|&b| to_float(ulaw_decode(b))));
}

/// Encodes float samples (clipped to [-1, 1]) as µ-law, appending to `out`.
pub fn encode_ulaw(samples: &[f32], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&x| ulaw_encode(to_linear(x))));
}

/// Decodes A-law bytes, appending float samples in [-1, 1] to `out`.
pub fn decode_alaw(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(bytes.iter().map(|&b| to_float(alaw_decode(b))));
}

/// Encodes float samples (clipped to [-1, 1]) as A-law, appending to `out`.
pub fn encode_alaw(samples: &[f32], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&x| alaw_encode(to_linear(x))));
}

/// Which G.711 companding law a call negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    /// µ-law (PCMU, RTP payload type 0), used in North America and Japan.
    Mu,
    /// A-law (PCMA, RTP payload type 8), used in most other countries.
    A,
}

impl Law {
    /// Decodes bytes in this law, appending float samples in [-1, 1] to `out`.
    pub fn decode(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Law::Mu => decode_ulaw(bytes, out),
            Law::A => decode_alaw(bytes, out),
        }
    }

    /// Encodes float samples (clipped to [-1, 1]) in this law, appending to `out`.
    pub fn encode(self, samples: &[f32], out: &mut Vec<u8>) {
        match self {
            Law::Mu => encode_ulaw(samples, out),
            Law::A => encode_alaw(samples, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_every_code_round_trips() {
        for b in 0..=255u8 {
            let back = ulaw_encode(ulaw_decode(b));
            if b == 0x7F {
                // Negative zero; the encoder only produces positive zero.
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, b, "µ-law byte {b:#04x}");
            }
        }
    }

    #[test]
    fn alaw_every_code_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(b)), b, "A-law byte {b:#04x}");
        }
    }

    #[test]
    fn reference_values() {
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0x7E), -8);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-32768), 0x00);
        assert_eq!(ulaw_encode(32767), 0x80);

        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(32767), 0xAA);
        assert_eq!(alaw_encode(-32768), 0x2A);
    }

    #[test]
    fn encoders_are_monotonic() {
        // Larger input never decodes to a smaller value.
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let u = ulaw_decode(ulaw_encode(s));
            let a = alaw_decode(alaw_encode(s));
            assert!(u >= prev_u, "µ-law not monotonic at {s}");
            assert!(a >= prev_a, "A-law not monotonic at {s}");
            prev_u = u;
            prev_a = a;
        }
    }

    #[test]
    fn decode_tables_are_monotonic_and_symmetric() {
        // A magnitude code is segment << 4 | step; on the wire it is XORed with a
        // per-sign mask. Larger codes must decode to larger values, and the
        // negative code to exactly the negated value.
        type Decode = fn(u8) -> i16;
        let laws: [(Decode, u8, u8); 2] = [(ulaw_decode, 0xFF, 0x7F), (alaw_decode, 0xD5, 0x55)];
        for (decode, positive, negative) in laws {
            for code in 0..0x7Fu8 {
                assert!(decode(code ^ positive) < decode((code + 1) ^ positive));
            }
            for code in 0..=0x7Fu8 {
                assert_eq!(decode(code ^ negative), -decode(code ^ positive));
            }
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        // Each step is at most 1/16 of its segment, so relative error stays small.
        for s in (-32000..=32000i32).step_by(7) {
            let s = s as i16;
            for (name, back) in [
                ("µ", ulaw_decode(ulaw_encode(s))),
                ("A", alaw_decode(alaw_encode(s))),
            ] {
                let err = (i32::from(back) - i32::from(s)).abs();
                let allowed = (i32::from(s).abs() / 16).max(16);
                assert!(err <= allowed, "{name}-law {s} -> {back}");
            }
        }
    }

    #[test]
    fn out_of_range_floats_clip() {
        for law in [Law::Mu, Law::A] {
            let mut bytes = Vec::new();
            law.encode(
                &[
                    1.0,
                    5.0,
                    f32::INFINITY,
                    -1.0,
                    -7.5,
                    f32::NEG_INFINITY,
                    f32::NAN,
                ],
                &mut bytes,
            );
            assert_eq!(bytes.len(), 7);
            assert_eq!(bytes[0], bytes[1]);
            assert_eq!(bytes[0], bytes[2]);
            assert_eq!(bytes[3], bytes[4]);
            assert_eq!(bytes[3], bytes[5]);
            let mut back = Vec::new();
            law.decode(&bytes, &mut back);
            assert!(back.iter().all(|x| (-1.0..=1.0).contains(x)));
            assert!(back[0] > 0.98, "{law:?} +clip {}", back[0]);
            assert!(back[3] < -0.98, "{law:?} -clip {}", back[3]);
            assert!(back[6].abs() < 0.001, "{law:?} NaN -> {}", back[6]);
        }
    }

    #[test]
    fn helpers_append() {
        let mut out = vec![0.5f32];
        decode_ulaw(&[0xFF, 0x80], &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], 0.5);
        assert_eq!(out[1], 0.0);
        assert!((out[2] - 32124.0 / 32768.0).abs() < 1e-6);

        let mut bytes = vec![7u8];
        encode_alaw(&[0.0], &mut bytes);
        assert_eq!(bytes, [7, 0xD5]);
    }

    fn snr_db(law: Law) -> f64 {
        let rate = 8000.0;
        let input: Vec<f32> = (0..8000)
            .map(|n| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / rate).sin())
            .collect();
        let mut bytes = Vec::new();
        law.encode(&input, &mut bytes);
        assert_eq!(bytes.len(), input.len());
        let mut output = Vec::new();
        law.decode(&bytes, &mut output);
        let signal: f64 = input.iter().map(|&x| f64::from(x).powi(2)).sum();
        let noise: f64 = input
            .iter()
            .zip(&output)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum();
        10.0 * (signal / noise).log10()
    }

    #[test]
    fn sine_survives_round_trip() {
        for law in [Law::Mu, Law::A] {
            let snr = snr_db(law);
            assert!(snr > 30.0, "{law:?}: SNR {snr:.1} dB");
        }
    }
}
