//! The codec a call negotiated, as one interface for the media reactor:
//! G.711 (8 kHz) or Opus (48 kHz, mono, RFC 7587), each concealing lost packets.

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Channels, SampleRate};

use super::Codec;
use super::g711::Law;
use super::plc::Concealer;

#[derive(Debug, thiserror::Error)]
#[error("Opus: {0}")]
pub struct WireError(String);

pub enum WireCodec {
    G711 {
        law: Law,
        plc: Box<Concealer>,
    },
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
            Codec::Pcmu => WireCodec::G711 {
                law: Law::Mu,
                plc: Box::default(),
            },
            Codec::Pcma => WireCodec::G711 {
                law: Law::A,
                plc: Box::default(),
            },
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
            WireCodec::G711 { .. } => 8_000,
            WireCodec::Opus { .. } => 48_000,
        }
    }

    /// Largest payload accepted: 120 ms of G.711, or an Opus packet within an MTU.
    pub fn max_payload(&self) -> usize {
        match self {
            WireCodec::G711 { .. } => 960,
            WireCodec::Opus { .. } => MAX_OPUS_PACKET,
        }
    }

    /// Samples in one 20 ms packet.
    pub fn frame(&self) -> usize {
        self.rate() as usize / 50
    }

    /// Decodes one packet, appending its samples to `out`; undecodable Opus is
    /// concealed as one frame.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) {
        let frame = self.frame();
        let start = out.len();
        match self {
            WireCodec::G711 { law, plc } => {
                law.decode(payload, out);
                plc.received(&mut out[start..]);
            }
            WireCodec::Opus { decoder, .. } => {
                let payload = Some(payload).filter(|p| !p.is_empty());
                // Up to 120 ms may arrive in one packet.
                out.resize(start + frame * 6, 0.0);
                let n = decoder
                    .decode_float(payload, &mut out[start..], false)
                    .unwrap_or(0);
                out.truncate(start + n);
                if n == 0 {
                    self.conceal(frame, out);
                }
            }
        }
    }

    /// Appends `samples` of concealment for a lost packet.
    pub fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) {
        match self {
            WireCodec::G711 { plc, .. } => plc.conceal(samples, out),
            WireCodec::Opus { decoder, .. } => {
                let start = out.len();
                out.resize(start + samples, 0.0);
                // Opus conceals exactly the space it is given.
                if decoder
                    .decode_float(None::<&[u8]>, &mut out[start..], false)
                    .is_err()
                {
                    out[start..].fill(0.0);
                }
            }
        }
    }

    /// Encodes one packet's worth of samples at the wire rate (Opus: 10, 20,
    /// 40 or 60 ms).
    pub fn encode(&mut self, pcm: &[f32], out: &mut Vec<u8>) {
        match self {
            WireCodec::G711 { law, .. } => law.encode(pcm, out),
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
            c.decode(&pkt, &mut decoded);
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
        c.conceal(960, &mut decoded);
        assert_eq!(decoded.len(), before + 960);
        // Garbage is concealed too, not a panic.
        c.decode(&[0xff, 0x00, 0x13], &mut decoded);
        assert_eq!(decoded.len(), before + 2 * 960);
    }

    #[test]
    fn g711_frames() {
        let mut c = WireCodec::new(Codec::Pcma).unwrap();
        assert_eq!(c.frame(), 160);
        let mut out = Vec::new();
        c.conceal(160, &mut out);
        assert_eq!(out, vec![0.0; 160]);
        c.decode(&[0x55; 240], &mut out);
        assert_eq!(out.len(), 400, "a 30 ms packet decodes whole");
    }
}
