//! The codec a call negotiated, as one interface for the media reactor:
//! G.711 (8 kHz) or Opus (48 kHz, mono, RFC 7587), 20 ms a packet.

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Channels, SampleRate};

use super::g711::Law;
use crate::sip::sdp::Codec;

#[derive(Debug, thiserror::Error)]
#[error("Opus: {0}")]
pub struct WireError(String);

pub enum WireCodec {
    G711(Law),
    Opus {
        encoder: Box<Encoder>,
        decoder: Box<Decoder>,
    },
}

/// The longest Opus packet we write; 20 ms of speech needs far less.
const MAX_OPUS_PACKET: usize = 1500;

impl WireCodec {
    pub fn new(codec: Codec) -> Result<WireCodec, WireError> {
        Ok(match codec {
            Codec::Pcmu => WireCodec::G711(Law::Mu),
            Codec::Pcma => WireCodec::G711(Law::A),
            Codec::Opus => {
                let err = |e: audiopus::Error| WireError(e.to_string());
                let encoder = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)
                    .map_err(err)?;
                let decoder = Decoder::new(SampleRate::Hz48000, Channels::Mono).map_err(err)?;
                WireCodec::Opus {
                    encoder: Box::new(encoder),
                    decoder: Box::new(decoder),
                }
            }
        })
    }

    /// Sample rate on the wire (and of RTP timestamps).
    pub fn rate(&self) -> u32 {
        match self {
            WireCodec::G711(_) => 8_000,
            WireCodec::Opus { .. } => 48_000,
        }
    }

    /// Samples in one 20 ms packet.
    pub fn frame(&self) -> usize {
        self.rate() as usize / 50
    }

    /// Decodes one packet, or conceals a lost one (`None`), appending a frame to `out`.
    pub fn decode(&mut self, payload: Option<&[u8]>, out: &mut Vec<f32>) {
        let frame = self.frame();
        match self {
            WireCodec::G711(law) => match payload {
                Some(p) => law.decode(p, out),
                None => out.resize(out.len() + frame, 0.0),
            },
            WireCodec::Opus { decoder, .. } => {
                let start = out.len();
                let payload = payload.filter(|p| !p.is_empty());
                // Up to 120 ms may arrive in one packet; concealment fills exactly the space given.
                let room = if payload.is_some() { frame * 6 } else { frame };
                out.resize(start + room, 0.0);
                let n = decoder
                    .decode_float(payload, &mut out[start..], false)
                    .unwrap_or(0);
                out.truncate(start + if n == 0 { 0 } else { n });
                if n == 0 {
                    out.resize(start + frame, 0.0);
                }
            }
        }
    }

    /// Encodes one 20 ms frame at the wire rate.
    pub fn encode(&mut self, pcm: &[f32], out: &mut Vec<u8>) {
        match self {
            WireCodec::G711(law) => law.encode(pcm, out),
            WireCodec::Opus { encoder, .. } => {
                let start = out.len();
                out.resize(start + MAX_OPUS_PACKET, 0);
                let n = encoder.encode_float(pcm, &mut out[start..]).unwrap_or(0);
                out.truncate(start + n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_round_trip_keeps_a_tone() {
        let mut c = WireCodec::new(Codec::Opus).unwrap();
        assert_eq!((c.rate(), c.frame()), (48_000, 960));
        let mut decoded = Vec::new();
        for k in 0..25 {
            let pcm: Vec<f32> = (0..960)
                .map(|i| {
                    ((k * 960 + i) as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.5
                })
                .collect();
            let mut pkt = Vec::new();
            c.encode(&pcm, &mut pkt);
            assert!(!pkt.is_empty() && pkt.len() < 400, "{} bytes", pkt.len());
            c.decode(Some(&pkt), &mut decoded);
        }
        assert_eq!(decoded.len(), 25 * 960);
        let tail = &decoded[10 * 960..];
        assert!(
            crate::audio::rms(tail) > 0.2,
            "tone lost: {}",
            crate::audio::rms(tail)
        );
        // A lost packet is concealed with one frame.
        let before = decoded.len();
        c.decode(None, &mut decoded);
        assert_eq!(decoded.len(), before + 960);
        // Garbage is concealed too, not a panic.
        c.decode(Some(&[0xff, 0x00, 0x13]), &mut decoded);
        assert_eq!(decoded.len(), before + 2 * 960);
    }

    #[test]
    fn g711_frames() {
        let mut c = WireCodec::new(Codec::Pcma).unwrap();
        assert_eq!(c.frame(), 160);
        let mut out = Vec::new();
        c.decode(None, &mut out);
        assert_eq!(out, vec![0.0; 160]);
    }
}
