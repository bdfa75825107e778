//! SDP (RFC 4566) parsing and serialising, and the answerer's side of the
//! offer/answer model (RFC 3264), for an agent that carries one audio stream.
//!
//! Everything here is sans-IO: [`parse`] turns a body into a
//! [`SessionDescription`], [`negotiate`] decides what to accept from an offer,
//! and [`answer`] / [`offer`] render the SDP that goes back on the wire.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

/// Largest SDP body accepted. Real offers are a few hundred bytes; anything
/// this big is broken or hostile, so it is refused before any per-line work.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Most media sections (`m=` lines) accepted in one description.
pub const MAX_MEDIA: usize = 64;
/// Most formats accepted on one `m=` line.
pub const MAX_FORMATS: usize = 256;
/// Most `a=rtpmap` and `a=fmtp` entries kept per media section; extras are
/// dropped so a flood of attributes cannot grow memory without bound.
pub const MAX_ATTRIBUTES_PER_MEDIA: usize = 256;

/// Longest slice of an offending line quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 80;
/// Our packetisation time when the offer asks for none (or one we cannot do).
const OUR_PTIME_MS: u32 = 20;
/// Remote ptime wishes we honour; anything else is treated as 20 ms.
const ACCEPTED_PTIMES_MS: [u32; 5] = [10, 20, 30, 40, 60];
/// Opus frames are 2.5, 5, 10, 20, 40 or 60 ms (RFC 6716): no 30.
const OPUS_PTIMES_MS: [u32; 4] = [10, 20, 40, 60];
/// Payload type used for opus when Izwi makes the offer (a common choice that
/// avoids clashing with the static types).
const OPUS_OFFER_PT: u8 = 111;
/// Payload type for telephone-event at the most-preferred codec's clock rate.
const TELEPHONE_EVENT_PT: u8 = 101;
/// Payload type for telephone-event at the other clock rate, when an offer
/// mixes 8 kHz and 48 kHz codecs.
const TELEPHONE_EVENT_ALT_PT: u8 = 100;
const TELEPHONE_EVENT: &str = "telephone-event";
/// RFC 4733 events 0-15 are DTMF digits, 16 is flash.
const TELEPHONE_EVENT_RANGE: &str = "0-16";

/// Why an SDP body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    /// The body holds no lines at all.
    #[error("SDP body is empty")]
    Empty,
    /// The body is larger than [`MAX_SDP_BYTES`].
    #[error("SDP body is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the rejected body.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The first line is not `v=`.
    #[error("SDP does not start with a v= line")]
    MissingVersion,
    /// A line could not be understood.
    #[error("SDP line {line} {text:?}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The start of the offending line.
        text: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// More than [`MAX_MEDIA`] `m=` lines.
    #[error("SDP line {line}: more than {limit} media sections")]
    TooManyMedia {
        /// 1-based line number of the first `m=` line over the limit.
        line: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// An audio stream with a non-zero port has no `c=` at either level.
    #[error("SDP line {line}: active audio stream has no connection address (c=)")]
    MissingConnection {
        /// 1-based line number of the `m=` line.
        line: usize,
    },
}

/// Why an offer cannot be accepted. A SIP UAS answers all of these with
/// `488 Not Acceptable Here`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NegotiationError {
    /// The offer has no `m=audio` line.
    #[error("offer has no audio stream")]
    NoAudio,
    /// Every audio stream is rejected (port 0) or uses a transport we do not
    /// speak (e.g. RTP/SAVP).
    #[error("offer has no usable audio stream (all rejected or unsupported transport)")]
    NoUsableStream,
    /// No offered codec is in our preference list.
    #[error("offer has no codec in common with ours")]
    NoCommonCodec,
    /// The chosen stream has no connection address at media or session level.
    #[error("offered audio stream has no connection address")]
    MissingConnection,
}

/// Media direction attribute (RFC 4566 §6, RFC 3264 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv`, the default.
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The direction an answerer uses for this offered direction.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Whether the side using this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side using this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The SDP attribute name, e.g. `sendrecv`.
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| name.eq_ignore_ascii_case(d.attribute()))
    }

    fn without_sending(self) -> Direction {
        if self.receives() {
            Direction::RecvOnly
        } else {
            Direction::Inactive
        }
    }
}

use crate::codec::Codec;

/// The codec an `a=rtpmap` entry describes, matching the encoding name
/// case-insensitively.
fn codec_of_rtpmap(map: &RtpMap) -> Option<Codec> {
    [Codec::Pcmu, Codec::Pcma, Codec::Opus]
        .into_iter()
        .find(|c| {
            map.encoding.eq_ignore_ascii_case(c.encoding_name())
                && map.clock_rate == c.clock_rate()
                && accepts_channels(*c, map.channels)
        })
}

fn accepts_channels(codec: Codec, channels: Option<u8>) -> bool {
    match codec {
        Codec::Pcmu | Codec::Pcma => matches!(channels, None | Some(1)),
        // RFC 7587 says "/2", but some phones write "/1" or nothing; the
        // decoder copes with either, so refusing them only loses calls.
        Codec::Opus => matches!(channels, None | Some(1) | Some(2)),
    }
}

fn rtpmap_value(codec: Codec) -> String {
    match codec.rtpmap_channels() {
        Some(ch) => format!("{}/{}/{ch}", codec.encoding_name(), codec.clock_rate()),
        None => format!("{}/{}", codec.encoding_name(), codec.clock_rate()),
    }
}

/// A parsed session description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionDescription {
    /// `<sess-id>` from the `o=` line (empty if there was none).
    pub origin_session_id: String,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    /// Media sections in order.
    pub media: Vec<Media>,
}

/// One media section (`m=` line and the lines after it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Media {
    /// Media type, e.g. `audio` or `video`.
    pub kind: String,
    /// Transport port; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// Transport protocol, e.g. `RTP/AVP`.
    pub protocol: String,
    /// RTP payload types in offer order. Empty for non-RTP transports whose
    /// formats are not numbers.
    pub formats: Vec<u8>,
    /// The `m=` line's formats exactly as written, so a rejected non-RTP
    /// stream (e.g. `udptl t38`) can be echoed back in an answer.
    pub raw_formats: Vec<String>,
    /// `a=rtpmap` entries.
    pub rtpmap: Vec<RtpMap>,
    /// `a=fmtp` entries as (payload type, parameters).
    pub fmtp: Vec<(u8, String)>,
    /// `a=ptime` in milliseconds.
    pub ptime: Option<u32>,
    /// `a=maxptime` in milliseconds.
    pub maxptime: Option<u32>,
    /// Media-level direction attribute; overrides the session level.
    pub direction: Option<Direction>,
    /// Media-level `c=` address; overrides the session level.
    pub connection: Option<IpAddr>,
}

impl Media {
    /// Whether this is an audio section.
    pub fn is_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
    }

    /// The rtpmap entry for a payload type, if any.
    pub fn rtpmap_for(&self, payload_type: u8) -> Option<&RtpMap> {
        self.rtpmap.iter().find(|m| m.payload_type == payload_type)
    }

    /// The codec a payload type stands for: its rtpmap when present, else the
    /// static assignment.
    pub fn codec_of(&self, payload_type: u8) -> Option<Codec> {
        match self.rtpmap_for(payload_type) {
            Some(map) => codec_of_rtpmap(map),
            None => Codec::from_static_payload_type(payload_type),
        }
    }

    /// The payload type offered for telephone-event at this clock rate.
    pub fn telephone_event(&self, clock_rate: u32) -> Option<u8> {
        self.formats.iter().copied().find(|&pt| {
            self.rtpmap_for(pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case(TELEPHONE_EVENT) && m.clock_rate == clock_rate
            })
        })
    }
}

/// An `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]` attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type number.
    pub payload_type: u8,
    /// Encoding name as written.
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channel count, when given.
    pub channels: Option<u8>,
}

/// What an offered `m=` line looked like, enough to write its counterpart in
/// the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaLine {
    /// Media type, e.g. `video`.
    pub kind: String,
    /// Transport protocol, e.g. `RTP/AVP`.
    pub protocol: String,
    /// The first offered format, echoed when the stream is rejected.
    pub first_format: String,
}

impl From<&Media> for MediaLine {
    fn from(media: &Media) -> Self {
        let first_format = media
            .raw_formats
            .first()
            .cloned()
            .or_else(|| media.formats.first().map(u8::to_string))
            .unwrap_or_else(|| "0".to_owned());
        MediaLine {
            kind: media.kind.clone(),
            protocol: media.protocol.clone(),
            first_format,
        }
    }
}

/// The outcome of accepting an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Chosen codec.
    pub codec: Codec,
    /// The offerer's payload type number for it.
    pub payload_type: u8,
    /// The offerer's telephone-event payload type at the codec's clock rate.
    pub telephone_event: Option<u8>,
    /// Packetisation in ms, both ways: the offer's wish, or 20 when it has
    /// none or one the codec cannot do.
    pub ptime: u32,
    /// Our direction, mirroring the offer.
    pub direction: Direction,
    /// Where to send RTP.
    pub remote: SocketAddr,
    /// Index of the chosen `m=` line in the offer.
    pub media_index: usize,
    /// Number of `m=` lines in the offer; the answer must have as many.
    pub media_count: usize,
    /// Every offered `m=` line, so rejected ones can be echoed with port 0.
    pub offered: Vec<MediaLine>,
}

impl Negotiated {
    /// What the RTP session needs of it.
    pub fn rtp(&self) -> crate::rtp::session::Params {
        crate::rtp::session::Params {
            codec: self.codec,
            payload_type: self.payload_type,
            telephone_event: self.telephone_event,
            ptime: self.ptime,
            sends: self.direction.sends(),
            remote: self.remote,
        }
    }
}

/// Parses an SDP body. Accepts CRLF or LF line ends; ignores unknown lines
/// and attributes. Never panics.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge {
            size: text.len(),
            limit: MAX_SDP_BYTES,
        });
    }
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, raw)| (i + 1, raw.strip_suffix('\r').unwrap_or(raw)))
        .filter(|(_, line)| !line.trim().is_empty());
    let (first_no, first) = lines.next().ok_or(SdpError::Empty)?;
    check_version(first_no, first)?;
    let mut builder = Builder::default();
    for (no, line) in lines {
        builder.line(no, line)?;
    }
    builder.finish()
}

fn check_version(no: usize, line: &str) -> Result<(), SdpError> {
    let (kind, value) = split_line(line).ok_or_else(|| malformed(no, line, NOT_A_LINE))?;
    if kind != 'v' {
        return Err(SdpError::MissingVersion);
    }
    if value.trim() != "0" {
        return Err(malformed(no, line, "unsupported SDP version"));
    }
    Ok(())
}

const NOT_A_LINE: &str = "expected <type>=<value>";

fn malformed(line: usize, text: &str, reason: &'static str) -> SdpError {
    SdpError::Malformed {
        line,
        text: text.chars().take(MAX_QUOTED_CHARS).collect(),
        reason,
    }
}

/// Splits `x=value`; the type must be a single letter (RFC 4566 §5).
fn split_line(line: &str) -> Option<(char, &str)> {
    let (key, value) = line.split_once('=')?;
    let mut chars = key.chars();
    let kind = chars.next()?;
    (chars.next().is_none() && kind.is_ascii_alphabetic()).then_some((kind, value))
}

#[derive(Default)]
struct Builder {
    desc: SessionDescription,
    /// Line number of each `m=` line, for error messages after the fact.
    media_lines: Vec<usize>,
}

impl Builder {
    fn line(&mut self, no: usize, line: &str) -> Result<(), SdpError> {
        let (kind, value) = split_line(line).ok_or_else(|| malformed(no, line, NOT_A_LINE))?;
        match kind {
            'o' => {
                self.desc.origin_session_id = parse_origin(value)
                    .ok_or_else(|| malformed(no, line, "o= needs six fields"))?;
            }
            'c' => {
                let addr = parse_connection(value).map_err(|reason| malformed(no, line, reason))?;
                self.set_connection(addr);
            }
            'm' => self.push_media(no, line, value)?,
            'a' => self.attribute(value),
            // s=, t=, b=, i=, u=, e=, p=, z=, k=, r= and a repeated v= carry
            // nothing this agent acts on.
            _ => {}
        }
        Ok(())
    }

    fn set_connection(&mut self, addr: IpAddr) {
        let slot = match self.desc.media.last_mut() {
            Some(media) => &mut media.connection,
            None => &mut self.desc.connection,
        };
        // Several c= lines only occur for layered multicast; the first is the
        // base layer.
        slot.get_or_insert(addr);
    }

    fn push_media(&mut self, no: usize, line: &str, value: &str) -> Result<(), SdpError> {
        if self.desc.media.len() >= MAX_MEDIA {
            return Err(SdpError::TooManyMedia {
                line: no,
                limit: MAX_MEDIA,
            });
        }
        let media = parse_media(value).map_err(|reason| malformed(no, line, reason))?;
        self.desc.media.push(media);
        self.media_lines.push(no);
        Ok(())
    }

    fn attribute(&mut self, value: &str) {
        let (name, arg) = match value.split_once(':') {
            Some((name, arg)) => (name.trim(), Some(arg.trim())),
            None => (value.trim(), None),
        };
        if let Some(direction) = Direction::from_attribute(name) {
            match self.desc.media.last_mut() {
                Some(media) => media.direction = Some(direction),
                None => self.desc.direction = Some(direction),
            }
            return;
        }
        // rtpmap, fmtp and ptime only mean something inside a media section.
        if let (Some(media), Some(arg)) = (self.desc.media.last_mut(), arg) {
            media_attribute(media, name, arg);
        }
    }

    fn finish(self) -> Result<SessionDescription, SdpError> {
        for (media, &line) in self.desc.media.iter().zip(&self.media_lines) {
            let has_address = media.connection.is_some() || self.desc.connection.is_some();
            if media.is_audio() && media.port != 0 && !has_address {
                return Err(SdpError::MissingConnection { line });
            }
        }
        Ok(self.desc)
    }
}

fn media_attribute(media: &mut Media, name: &str, arg: &str) {
    // Malformed attributes are dropped rather than failing the whole offer:
    // a stray bad rtpmap should cost at most that one format.
    if name.eq_ignore_ascii_case("rtpmap") {
        if let Some(map) = parse_rtpmap(arg)
            && media.rtpmap.len() < MAX_ATTRIBUTES_PER_MEDIA
        {
            media.rtpmap.push(map);
        }
    } else if name.eq_ignore_ascii_case("fmtp") {
        if let Some(fmtp) = parse_fmtp(arg)
            && media.fmtp.len() < MAX_ATTRIBUTES_PER_MEDIA
        {
            media.fmtp.push(fmtp);
        }
    } else if name.eq_ignore_ascii_case("ptime") {
        media.ptime = parse_millis(arg).or(media.ptime);
    } else if name.eq_ignore_ascii_case("maxptime") {
        media.maxptime = parse_millis(arg).or(media.maxptime);
    }
}

/// Parses an unsigned decimal made only of ASCII digits; `str::parse` alone
/// would also take a leading `+`.
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_payload_type(s: &str) -> Option<u8> {
    parse_decimal::<u8>(s).filter(|&pt| pt <= 127)
}

/// Packet times are integers in practice, but `20.0` turns up too.
fn parse_millis(s: &str) -> Option<u32> {
    if let Some(ms) = parse_decimal::<u32>(s) {
        return Some(ms);
    }
    let (whole, fraction) = s.split_once('.')?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    parse_decimal::<u32>(whole)
}

fn parse_origin(value: &str) -> Option<String> {
    let fields: Vec<&str> = value.split_whitespace().take(7).collect();
    match fields.as_slice() {
        [_user, session_id, _version, _net, _addr_type, _addr] => Some((*session_id).to_owned()),
        _ => None,
    }
}

fn parse_connection(value: &str) -> Result<IpAddr, &'static str> {
    let mut fields = value.split_whitespace();
    let (Some(net), Some(addr_type), Some(addr)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err("c= needs <nettype> <addrtype> <address>");
    };
    if !net.eq_ignore_ascii_case("IN") {
        return Err("unsupported network type");
    }
    // Multicast addresses carry /ttl[/count] suffixes.
    let host = addr.split('/').next().unwrap_or(addr);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host
        .parse()
        .map_err(|_| "connection address is not an IP literal")?;
    let family_matches = match ip {
        IpAddr::V4(_) => addr_type.eq_ignore_ascii_case("IP4"),
        IpAddr::V6(_) => addr_type.eq_ignore_ascii_case("IP6"),
    };
    if family_matches {
        Ok(ip)
    } else {
        Err("address does not match address type")
    }
}

fn parse_port(s: &str) -> Result<u16, &'static str> {
    const BAD_PORT: &str = "m= port is not a number 0-65535";
    // `<port>/<number of ports>` is allowed for hierarchical streams.
    let (port, count) = match s.split_once('/') {
        Some((port, count)) => (port, Some(count)),
        None => (s, None),
    };
    if count.is_some_and(|c| parse_decimal::<u16>(c).is_none()) {
        return Err(BAD_PORT);
    }
    parse_decimal(port).ok_or(BAD_PORT)
}

fn is_rtp_protocol(protocol: &str) -> bool {
    protocol.split('/').any(|p| p.eq_ignore_ascii_case("RTP"))
}

fn parse_media(value: &str) -> Result<Media, &'static str> {
    let mut fields = value.split_whitespace();
    let kind = fields.next().ok_or("m= line is empty")?;
    let port = parse_port(fields.next().ok_or("m= line has no port")?)?;
    let protocol = fields.next().ok_or("m= line has no transport protocol")?;
    let raw_formats: Vec<String> = fields.take(MAX_FORMATS + 1).map(str::to_owned).collect();
    if raw_formats.is_empty() {
        return Err("m= line has no formats");
    }
    if raw_formats.len() > MAX_FORMATS {
        return Err("m= line has too many formats");
    }
    let formats = if is_rtp_protocol(protocol) {
        raw_formats
            .iter()
            .map(|f| parse_payload_type(f))
            .collect::<Option<Vec<u8>>>()
            .ok_or("payload type is not a number 0-127")?
    } else {
        // Non-RTP formats (`t38`, `*`) are names, not payload types.
        raw_formats
            .iter()
            .filter_map(|f| parse_payload_type(f))
            .collect()
    };
    Ok(Media {
        kind: kind.to_owned(),
        port,
        protocol: protocol.to_owned(),
        formats,
        raw_formats,
        ..Media::default()
    })
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, rest) = arg.split_once(char::is_whitespace)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().filter(|e| !e.is_empty())?;
    let clock_rate = parse_decimal(parts.next()?)?;
    let channels = match parts.next() {
        Some(ch) => Some(parse_decimal(ch)?),
        None => None,
    };
    Some(RtpMap {
        payload_type: parse_payload_type(pt)?,
        encoding: encoding.to_owned(),
        clock_rate,
        channels,
    })
}

fn parse_fmtp(arg: &str) -> Option<(u8, String)> {
    let (pt, params) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
    Some((parse_payload_type(pt)?, params.trim().to_owned()))
}

/// Whether we can carry RTP over this transport: plain RTP only, since Izwi
/// does no SRTP.
fn is_supported_transport(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("RTP/AVP") || protocol.eq_ignore_ascii_case("RTP/AVPF")
}

/// Chooses what to accept from an offer (RFC 3264 §6): the first usable audio
/// stream that has a codec in `preference`, the codec picked by our order of
/// preference using the offerer's payload type. Also works on an answer to
/// one of our own offers, to learn what the peer picked.
pub fn negotiate(
    offer: &SessionDescription,
    preference: &[Codec],
) -> Result<Negotiated, NegotiationError> {
    let mut audio = offer
        .media
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_audio())
        .peekable();
    if audio.peek().is_none() {
        return Err(NegotiationError::NoAudio);
    }
    let mut usable = audio
        .filter(|(_, m)| m.port != 0 && is_supported_transport(&m.protocol))
        .peekable();
    if usable.peek().is_none() {
        return Err(NegotiationError::NoUsableStream);
    }
    let (media_index, media, codec, payload_type) = usable
        .find_map(|(i, m)| pick_codec(m, preference).map(|(c, pt)| (i, m, c, pt)))
        .ok_or(NegotiationError::NoCommonCodec)?;
    let ip = media
        .connection
        .or(offer.connection)
        .ok_or(NegotiationError::MissingConnection)?;
    let offered_direction = media
        .direction
        .or(offer.direction)
        .unwrap_or(Direction::SendRecv);
    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event: media.telephone_event(codec.clock_rate()),
        ptime: media
            .ptime
            .filter(|p| ACCEPTED_PTIMES_MS.contains(p))
            .filter(|p| codec != Codec::Opus || OPUS_PTIMES_MS.contains(p))
            .unwrap_or(OUR_PTIME_MS),
        direction: answer_direction(offered_direction, ip),
        remote: SocketAddr::new(ip, media.port),
        media_index,
        media_count: offer.media.len(),
        offered: offer.media.iter().map(MediaLine::from).collect(),
    })
}

fn pick_codec(media: &Media, preference: &[Codec]) -> Option<(Codec, u8)> {
    preference.iter().find_map(|&codec| {
        media
            .formats
            .iter()
            .find(|&&pt| media.codec_of(pt) == Some(codec))
            .map(|&pt| (codec, pt))
    })
}

/// Mirrors the offered direction. A `c=0.0.0.0` offer is the RFC 2543 way of
/// putting us on hold: there is nowhere to send to, so we only receive.
fn answer_direction(offered: Direction, remote: IpAddr) -> Direction {
    let mirrored = offered.reversed();
    if remote.is_unspecified() {
        mirrored.without_sending()
    } else {
        mirrored
    }
}

/// Appends one SDP line with the CRLF the grammar requires.
fn push_line(out: &mut String, args: fmt::Arguments<'_>) {
    // Writing into a String cannot fail.
    let _ = out.write_fmt(args);
    out.push_str("\r\n");
}

fn push_session_header(out: &mut String, local: IpAddr, session_id: u64, session_version: u64) {
    let family = match local {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    push_line(out, format_args!("v=0"));
    push_line(
        out,
        format_args!("o=izwi {session_id} {session_version} IN {family} {local}"),
    );
    push_line(out, format_args!("s=izwi"));
    push_line(out, format_args!("c=IN {family} {local}"));
    push_line(out, format_args!("t=0 0"));
}

fn push_codec_attributes(out: &mut String, pt: u8, codec: Codec) {
    push_line(out, format_args!("a=rtpmap:{pt} {}", rtpmap_value(codec)));
    if codec == Codec::Opus {
        // In-band FEC lets the remote recover lost frames for free.
        push_line(out, format_args!("a=fmtp:{pt} useinbandfec=1"));
    }
}

fn push_telephone_event(out: &mut String, pt: u8, clock_rate: u32) {
    push_line(
        out,
        format_args!("a=rtpmap:{pt} {TELEPHONE_EVENT}/{clock_rate}"),
    );
    push_line(out, format_args!("a=fmtp:{pt} {TELEPHONE_EVENT_RANGE}"));
}

/// Renders the answer to the offer `n` was negotiated from: one `m=` line per
/// offered line in the same order (RFC 3264 §6), the chosen one accepted on
/// `rtp_port`, the others rejected with port 0.
pub fn answer(
    n: &Negotiated,
    local: IpAddr,
    rtp_port: u16,
    session_id: u64,
    session_version: u64,
) -> String {
    let mut out = String::with_capacity(512);
    push_session_header(&mut out, local, session_id, session_version);
    // The cap only matters for a hand-built Negotiated; parsed offers are
    // already within it.
    let count = n
        .media_count
        .max(n.media_index.saturating_add(1))
        .min(MAX_MEDIA);
    for index in 0..count {
        let offered = n.offered.get(index);
        if index == n.media_index {
            push_accepted_media(&mut out, n, offered, rtp_port);
        } else {
            push_rejected_media(&mut out, offered);
        }
    }
    out
}

fn push_accepted_media(out: &mut String, n: &Negotiated, offered: Option<&MediaLine>, port: u16) {
    // RFC 3264 wants the answer's transport to match the offer's.
    let protocol = offered
        .map(|line| line.protocol.as_str())
        .filter(|p| is_supported_transport(p))
        .unwrap_or("RTP/AVP");
    let pt = n.payload_type;
    let telephone_event = n.telephone_event.filter(|&te| te != pt);
    match telephone_event {
        Some(te) => push_line(out, format_args!("m=audio {port} {protocol} {pt} {te}")),
        None => push_line(out, format_args!("m=audio {port} {protocol} {pt}")),
    }
    push_codec_attributes(out, pt, n.codec);
    if let Some(te) = telephone_event {
        push_telephone_event(out, te, n.codec.clock_rate());
    }
    push_line(out, format_args!("a=ptime:{}", n.ptime));
    push_line(out, format_args!("a={}", n.direction.attribute()));
}

fn push_rejected_media(out: &mut String, offered: Option<&MediaLine>) {
    match offered {
        Some(line) => push_line(
            out,
            format_args!("m={} 0 {} {}", line.kind, line.protocol, line.first_format),
        ),
        None => push_line(out, format_args!("m=audio 0 RTP/AVP 0")),
    }
}

/// Renders an offer with one sendrecv audio stream, for outbound calls and
/// re-INVITEs without SDP. Codecs keep the given order of preference (an
/// empty list offers PCMU); payload types are 0, 8 and 111 (opus), and
/// telephone-event is 101 at the first codec's clock rate, plus 100 at the
/// other rate when 8 kHz and 48 kHz codecs are mixed.
pub fn offer(
    codecs: &[Codec],
    telephone_event: bool,
    local: IpAddr,
    rtp_port: u16,
    session_id: u64,
    session_version: u64,
) -> String {
    let mut ordered: Vec<Codec> = Vec::with_capacity(3);
    for &codec in codecs {
        if !ordered.contains(&codec) {
            ordered.push(codec);
        }
    }
    if ordered.is_empty() {
        ordered.push(Codec::Pcmu);
    }
    let events = if telephone_event {
        telephone_event_payload_types(&ordered)
    } else {
        Vec::new()
    };

    let mut out = String::with_capacity(512);
    push_session_header(&mut out, local, session_id, session_version);
    let mut m_line = format!("m=audio {rtp_port} RTP/AVP");
    let numbers = ordered
        .iter()
        .map(|&c| offer_payload_type(c))
        .chain(events.iter().map(|&(pt, _)| pt));
    for pt in numbers {
        let _ = write!(m_line, " {pt}");
    }
    push_line(&mut out, format_args!("{m_line}"));
    for &codec in &ordered {
        push_codec_attributes(&mut out, offer_payload_type(codec), codec);
    }
    for &(pt, clock_rate) in &events {
        push_telephone_event(&mut out, pt, clock_rate);
    }
    push_line(&mut out, format_args!("a=ptime:{OUR_PTIME_MS}"));
    push_line(&mut out, format_args!("a=sendrecv"));
    out
}

fn offer_payload_type(codec: Codec) -> u8 {
    codec.default_payload_type().unwrap_or(OPUS_OFFER_PT)
}

/// telephone-event must share the audio codec's clock rate (RFC 4733 §2.1),
/// so each distinct rate offered gets its own entry.
fn telephone_event_payload_types(codecs: &[Codec]) -> Vec<(u8, u32)> {
    let mut rates: Vec<u32> = Vec::with_capacity(2);
    for codec in codecs {
        if !rates.contains(&codec.clock_rate()) {
            rates.push(codec.clock_rate());
        }
    }
    rates
        .into_iter()
        .zip([TELEPHONE_EVENT_PT, TELEPHONE_EVENT_ALT_PT])
        .map(|(rate, pt)| (pt, rate))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SIPP: &str = "v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0\r\n\
        a=rtpmap:0 PCMU/8000\r\n";

    const BARESIP: &str = "v=0\r\n\
        o=- 2890844526 2890844527 IN IP4 192.168.1.20\r\n\
        s=-\r\n\
        c=IN IP4 192.168.1.20\r\n\
        t=0 0\r\n\
        m=audio 10462 RTP/AVP 96 0 8 101\r\n\
        b=AS:128\r\n\
        a=rtpmap:96 opus/48000/2\r\n\
        a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=rtcp-mux\r\n\
        a=ssrc:1911453346 cname:8d3d8f5c-2b1a-4d8f-a2c4-7cbb1c2e3f0a\r\n\
        a=sendrecv\r\n\
        a=label:1\r\n\
        a=ptime:20\r\n";

    const PBX_HOLD: &str = "v=0\n\
        o=root 1193718862 1193718863 IN IP4 10.0.0.5\n\
        s=Asterisk PBX 18.0\n\
        c=IN IP4 10.0.0.5\n\
        t=0 0\n\
        a=sendonly\n\
        m=audio 12000 RTP/AVP 8 0 101\n\
        a=rtpmap:8 PCMA/8000\n\
        a=rtpmap:0 PCMU/8000\n\
        a=rtpmap:101 telephone-event/8000\n\
        a=fmtp:101 0-16\n\
        a=maxptime:150\n\
        a=ptime:30\n";

    const PREFS: [Codec; 3] = [Codec::Opus, Codec::Pcmu, Codec::Pcma];
    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    fn negotiated(sdp: &str, prefs: &[Codec]) -> Negotiated {
        negotiate(&parse(sdp).expect("parses"), prefs).expect("negotiates")
    }

    #[test]
    fn parses_sipp_offer() {
        let desc = parse(SIPP).unwrap();
        assert_eq!(desc.origin_session_id, "53655765");
        assert_eq!(desc.connection, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(desc.media.len(), 1);
        let audio = &desc.media[0];
        assert_eq!(audio.kind, "audio");
        assert_eq!(audio.port, 6000);
        assert_eq!(audio.protocol, "RTP/AVP");
        assert_eq!(audio.formats, vec![0]);
        assert_eq!(audio.codec_of(0), Some(Codec::Pcmu));
    }

    #[test]
    fn negotiates_sipp_offer_without_rtpmap() {
        let sdp = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 6000 RTP/AVP 0\n";
        let n = negotiated(sdp, &PREFS);
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.payload_type, 0);
        assert_eq!(n.telephone_event, None);
        assert_eq!(n.ptime, 20);
        assert_eq!(n.direction, Direction::SendRecv);
        assert_eq!(n.remote, "127.0.0.1:6000".parse().unwrap());
        assert_eq!((n.media_index, n.media_count), (0, 1));
    }

    #[test]
    fn parses_baresip_attributes() {
        let desc = parse(BARESIP).unwrap();
        let audio = &desc.media[0];
        assert_eq!(audio.formats, vec![96, 0, 8, 101]);
        assert_eq!(
            audio.rtpmap_for(96),
            Some(&RtpMap {
                payload_type: 96,
                encoding: "opus".into(),
                clock_rate: 48000,
                channels: Some(2),
            })
        );
        assert_eq!(audio.fmtp[0], (96, "stereo=1;sprop-stereo=1".to_owned()));
        assert_eq!(audio.ptime, Some(20));
        assert_eq!(audio.direction, Some(Direction::SendRecv));
        assert_eq!(audio.telephone_event(8000), Some(101));
        assert_eq!(audio.telephone_event(48000), None);
    }

    #[test]
    fn preference_order_changes_the_pick() {
        let opus_first = negotiated(BARESIP, &PREFS);
        assert_eq!(
            (opus_first.codec, opus_first.payload_type),
            (Codec::Opus, 96)
        );
        // baresip offers telephone-event only at 8 kHz, so opus gets none.
        assert_eq!(opus_first.telephone_event, None);

        let alaw_first = negotiated(BARESIP, &[Codec::Pcma, Codec::Pcmu]);
        assert_eq!(
            (alaw_first.codec, alaw_first.payload_type),
            (Codec::Pcma, 8)
        );
        assert_eq!(alaw_first.telephone_event, Some(101));
        assert_eq!(alaw_first.remote, "192.168.1.20:10462".parse().unwrap());
    }

    #[test]
    fn dynamic_payload_needs_rtpmap_and_names_are_case_insensitive() {
        let base = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\n";
        let without_map = format!("{base}m=audio 4000 RTP/AVP 96\r\n");
        let desc = parse(&without_map).unwrap();
        assert_eq!(
            negotiate(&desc, &[Codec::Opus]),
            Err(NegotiationError::NoCommonCodec)
        );

        let shouting = format!(
            "{base}m=audio 4000 RTP/AVP 109 97\r\na=rtpmap:109 OPUS/48000/2\r\n\
             a=rtpmap:97 TELEPHONE-EVENT/48000\r\n"
        );
        let n = negotiated(&shouting, &[Codec::Opus]);
        assert_eq!((n.codec, n.payload_type), (Codec::Opus, 109));
        assert_eq!(n.telephone_event, Some(97));
    }

    #[test]
    fn rtpmap_overrides_static_assignment() {
        let sdp = "v=0\no=- 1 1 IN IP4 10.1.1.1\ns=-\nc=IN IP4 10.1.1.1\nt=0 0\n\
                   m=audio 4000 RTP/AVP 0\na=rtpmap:0 G729/8000\n";
        assert_eq!(
            negotiate(&parse(sdp).unwrap(), &PREFS),
            Err(NegotiationError::NoCommonCodec)
        );
    }

    #[test]
    fn pbx_hold_offer_gets_recvonly() {
        let desc = parse(PBX_HOLD).unwrap();
        assert_eq!(desc.direction, Some(Direction::SendOnly));
        assert_eq!(desc.media[0].connection, None);
        assert_eq!(desc.media[0].maxptime, Some(150));
        let n = negotiate(&desc, &PREFS).unwrap();
        assert_eq!(n.direction, Direction::RecvOnly);
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.ptime, 30);
        assert_eq!(n.remote, "10.0.0.5:12000".parse().unwrap());
    }

    #[test]
    fn media_direction_overrides_session() {
        let inactive = PBX_HOLD.replace("a=ptime:30\n", "a=ptime:30\na=inactive\n");
        let n = negotiated(&inactive, &PREFS);
        assert_eq!(n.direction, Direction::Inactive);

        let recvonly = PBX_HOLD.replace("a=ptime:30\n", "a=recvonly\n");
        let n = negotiated(&recvonly, &PREFS);
        assert_eq!(n.direction, Direction::SendOnly);
        assert_eq!(n.ptime, 20);
    }

    #[test]
    fn legacy_zero_address_hold_stops_us_sending() {
        let sdp = SIPP.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(negotiated(&sdp, &PREFS).direction, Direction::RecvOnly);
    }

    #[test]
    fn unusual_ptime_falls_back_to_twenty() {
        let sdp = format!("{SIPP}a=ptime:25\r\n");
        assert_eq!(parse(&sdp).unwrap().media[0].ptime, Some(25));
        assert_eq!(negotiated(&sdp, &PREFS).ptime, 20);
        let sdp = format!("{SIPP}a=ptime:40.0\r\n");
        assert_eq!(negotiated(&sdp, &PREFS).ptime, 40);
    }

    #[test]
    fn only_g729_is_not_acceptable() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                   m=audio 5000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        let err = negotiate(&parse(sdp).unwrap(), &PREFS).unwrap_err();
        assert_eq!(err, NegotiationError::NoCommonCodec);
        assert!(negotiate(&parse(SIPP).unwrap(), &[]).is_err());
    }

    #[test]
    fn rejected_and_unsupported_streams() {
        let zero_port = SIPP.replace("m=audio 6000", "m=audio 0");
        assert_eq!(
            negotiate(&parse(&zero_port).unwrap(), &PREFS),
            Err(NegotiationError::NoUsableStream)
        );
        let srtp = SIPP.replace("RTP/AVP", "RTP/SAVP");
        assert_eq!(
            negotiate(&parse(&srtp).unwrap(), &PREFS),
            Err(NegotiationError::NoUsableStream)
        );
        let avpf = SIPP.replace("RTP/AVP", "RTP/AVPF");
        let n = negotiated(&avpf, &PREFS);
        assert!(answer(&n, LOCAL, 7000, 1, 1).contains("m=audio 7000 RTP/AVPF 0\r\n"));
        let video_only = SIPP.replace("m=audio", "m=video");
        assert_eq!(
            negotiate(&parse(&video_only).unwrap(), &PREFS),
            Err(NegotiationError::NoAudio)
        );
    }

    #[test]
    fn skips_to_later_audio_stream_when_first_has_no_common_codec() {
        let sdp = format!("{SIPP}m=audio 6002 RTP/AVP 18\r\nm=audio 6004 RTP/AVP 8\r\n")
            .replace("m=audio 6000 RTP/AVP 0", "m=audio 6000 RTP/AVP 3");
        let n = negotiated(&sdp, &PREFS);
        assert_eq!((n.codec, n.media_index, n.media_count), (Codec::Pcma, 2, 3));
        assert_eq!(n.remote.port(), 6004);
    }

    #[test]
    fn missing_connection_is_reported() {
        let sdp = SIPP.replace("c=IN IP4 127.0.0.1\r\n", "");
        assert_eq!(parse(&sdp), Err(SdpError::MissingConnection { line: 5 }));
        // A rejected audio stream needs no address.
        let sdp = sdp.replace("m=audio 6000", "m=audio 0");
        assert!(parse(&sdp).is_ok());
        // Hand-built descriptions can still lack one.
        let mut desc = parse(SIPP).unwrap();
        desc.connection = None;
        assert_eq!(
            negotiate(&desc, &PREFS),
            Err(NegotiationError::MissingConnection)
        );
    }

    #[test]
    fn video_and_audio_answer_rejects_video() {
        let sdp = "v=0\r\no=- 7 7 IN IP4 203.0.113.4\r\ns=-\r\nc=IN IP4 203.0.113.4\r\nt=0 0\r\n\
                   m=video 9000 RTP/AVP 96 97\r\na=rtpmap:96 H264/90000\r\n\
                   m=audio 9002 RTP/AVP 8 0\r\na=sendrecv\r\n";
        let n = negotiated(sdp, &[Codec::Pcmu, Codec::Pcma]);
        assert_eq!((n.media_index, n.media_count), (1, 2));
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));

        let text = answer(&n, LOCAL, 7000, 42, 43);
        assert_eq!(text.matches("\r\nm=").count(), 2);
        let video_at = text
            .find("m=video 0 RTP/AVP 96\r\n")
            .expect("video rejected");
        let audio_at = text
            .find("m=audio 7000 RTP/AVP 0\r\n")
            .expect("audio accepted");
        assert!(video_at < audio_at, "answer keeps offer order");

        let reparsed = parse(&text).unwrap();
        assert_eq!(reparsed.media[0].kind, "video");
        assert_eq!(reparsed.media[0].port, 0);
        assert_eq!(reparsed.media[1].port, 7000);
    }

    #[test]
    fn answer_reparses_to_negotiated_values() {
        let n = negotiated(BARESIP, &[Codec::Pcma]);
        let text = answer(&n, LOCAL, 7078, 1234, 5678);
        assert!(text.ends_with("\r\n"));
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "only CRLF line ends"
        );
        assert!(text.starts_with("v=0\r\no=izwi 1234 5678 IN IP4 192.0.2.10\r\ns=izwi\r\n"));
        assert!(text.contains("a=fmtp:101 0-16\r\n"));

        let desc = parse(&text).unwrap();
        assert_eq!(desc.origin_session_id, "1234");
        assert_eq!(desc.connection, Some(LOCAL));
        let audio = &desc.media[0];
        assert_eq!(audio.port, 7078);
        assert_eq!(audio.formats, vec![8, 101]);
        assert_eq!(audio.ptime, Some(20));
        assert_eq!(audio.direction, Some(Direction::SendRecv));

        let back = negotiate(&desc, &[Codec::Pcma]).unwrap();
        assert_eq!((back.codec, back.payload_type), (Codec::Pcma, 8));
        assert_eq!(back.telephone_event, Some(101));
        assert_eq!(back.remote, SocketAddr::new(LOCAL, 7078));
    }

    #[test]
    fn opus_answer_has_rfc7587_rtpmap_and_fec() {
        let n = negotiated(BARESIP, &PREFS);
        let text = answer(&n, LOCAL, 7078, 1, 1);
        assert!(text.contains("m=audio 7078 RTP/AVP 96\r\n"));
        assert!(text.contains("a=rtpmap:96 opus/48000/2\r\n"));
        assert!(text.contains("a=fmtp:96 useinbandfec=1\r\n"));
        assert!(!text.contains("telephone-event"));
    }

    #[test]
    fn hold_answer_carries_mirrored_direction() {
        let n = negotiated(PBX_HOLD, &PREFS);
        let text = answer(&n, LOCAL, 7000, 1, 2);
        assert!(text.contains("a=recvonly\r\n"));
        assert_eq!(
            parse(&text).unwrap().media[0].direction,
            Some(Direction::RecvOnly)
        );
    }

    #[test]
    fn ipv6_offer_and_answer() {
        let sdp = "v=0\r\no=- 5 5 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
                   m=audio 5004 RTP/AVP 0\r\n";
        let n = negotiated(sdp, &PREFS);
        assert_eq!(n.remote, "[2001:db8::1]:5004".parse().unwrap());
        let local = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let text = answer(&n, local, 6000, 9, 9);
        assert!(text.contains("o=izwi 9 9 IN IP6 2001:db8::2\r\n"));
        assert!(text.contains("c=IN IP6 2001:db8::2\r\n"));
        assert_eq!(parse(&text).unwrap().connection, Some(local));

        let mismatched = sdp.replace("c=IN IP6", "c=IN IP4");
        assert!(matches!(
            parse(&mismatched),
            Err(SdpError::Malformed { line: 4, .. })
        ));
    }

    #[test]
    fn media_level_connection_wins() {
        let sdp = format!("{SIPP}c=IN IP4 198.51.100.7\r\n");
        let n = negotiated(&sdp, &PREFS);
        assert_eq!(n.remote, "198.51.100.7:6000".parse().unwrap());
        let multicast = SIPP.replace("127.0.0.1\r\nt=", "233.252.0.1/127\r\nt=");
        assert_eq!(
            parse(&multicast).unwrap().connection,
            Some("233.252.0.1".parse().unwrap())
        );
    }

    #[test]
    fn non_rtp_stream_is_echoed_when_rejected() {
        let sdp = format!("{SIPP}m=image 6002 udptl t38\r\n");
        let desc = parse(&sdp).unwrap();
        assert!(desc.media[1].formats.is_empty());
        let n = negotiate(&desc, &PREFS).unwrap();
        let text = answer(&n, LOCAL, 7000, 1, 1);
        assert!(text.contains("m=image 0 udptl t38\r\n"));
    }

    #[test]
    fn offer_lists_codecs_in_preference_order() {
        let text = offer(&PREFS, true, LOCAL, 8000, 3, 4);
        assert!(text.contains("m=audio 8000 RTP/AVP 111 0 8 101 100\r\n"));
        assert!(text.contains("a=rtpmap:111 opus/48000/2\r\n"));
        assert!(text.contains("a=rtpmap:101 telephone-event/48000\r\n"));
        assert!(text.contains("a=rtpmap:100 telephone-event/8000\r\n"));

        let desc = parse(&text).unwrap();
        assert_eq!(desc.media[0].formats, vec![111, 0, 8, 101, 100]);
        let n = negotiate(&desc, &[Codec::Pcmu]).unwrap();
        assert_eq!((n.payload_type, n.telephone_event), (0, Some(100)));

        let plain = offer(&[Codec::Pcma, Codec::Pcma], false, LOCAL, 8000, 3, 4);
        assert!(plain.contains("m=audio 8000 RTP/AVP 8\r\n"));
        assert!(!plain.contains("telephone-event"));
        let fallback = offer(&[], true, LOCAL, 8000, 3, 4);
        assert!(fallback.contains("m=audio 8000 RTP/AVP 0 101\r\n"));
        assert!(fallback.contains("a=rtpmap:101 telephone-event/8000\r\n"));
    }

    #[test]
    fn codec_properties() {
        assert_eq!(Codec::Opus.clock_rate(), 48000);
        assert_eq!(Codec::Pcma.default_payload_type(), Some(8));
        assert_eq!(Codec::Opus.default_payload_type(), None);
        assert_eq!(Codec::Pcmu.encoding_name(), "PCMU");
        assert_eq!(
            serde_json::to_string(&Codec::Pcma).unwrap(),
            "\"pcma\"".to_owned()
        );
        let parsed: Codec = serde_json::from_str("\"opus\"").unwrap();
        assert_eq!(parsed, Codec::Opus);
    }

    #[test]
    fn malformed_corpus_is_rejected_with_line_numbers() {
        assert_eq!(parse(""), Err(SdpError::Empty));
        assert_eq!(parse("\r\n\r\n"), Err(SdpError::Empty));
        assert!(matches!(
            parse("garbage"),
            Err(SdpError::Malformed { line: 1, .. })
        ));
        assert_eq!(
            parse("o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n"),
            Err(SdpError::MissingVersion)
        );
        assert!(matches!(parse("v=1\r\n"), Err(SdpError::Malformed { .. })));

        let cases = [
            ("m=audio notaport RTP/AVP 0", "port"),
            ("m=audio 70000 RTP/AVP 0", "port"),
            ("m=audio 6000 RTP/AVP", "no formats"),
            ("m=audio 6000 RTP/AVP zero", "payload type"),
            ("m=audio 6000 RTP/AVP 200", "payload type"),
            ("c=IN IP4 not.an.ip", "IP literal"),
            ("c=IN", "c= needs"),
            ("this line has no equals sign", "<type>=<value>"),
            ("ab=cd", "<type>=<value>"),
        ];
        for (bad, reason) in cases {
            let sdp = SIPP.replace("t=0 0", bad);
            let err = parse(&sdp).expect_err(bad);
            let SdpError::Malformed { line, text, .. } = &err else {
                panic!("{bad}: unexpected {err:?}");
            };
            assert_eq!(*line, 5, "{bad}");
            assert_eq!(text, bad);
            assert!(err.to_string().contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn huge_inputs_are_capped() {
        let mut flood = SIPP.to_owned();
        while flood.len() <= 10 * 1024 * 1024 {
            flood.push_str("a=ssrc:1 cname:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
        assert!(matches!(parse(&flood), Err(SdpError::TooLarge { .. })));

        let mut many_media = SIPP.to_owned();
        for _ in 0..MAX_MEDIA {
            many_media.push_str("m=audio 0 RTP/AVP 0\r\n");
        }
        assert!(matches!(
            parse(&many_media),
            Err(SdpError::TooManyMedia { .. })
        ));

        let formats: String = (0..300).map(|i| format!(" {}", i % 128)).collect();
        let too_many = SIPP.replace("RTP/AVP 0", &format!("RTP/AVP{formats}"));
        assert!(parse(&too_many).is_err());

        let mut attributes = SIPP.to_owned();
        for i in 0..1000 {
            attributes.push_str(&format!("a=rtpmap:{} X/8000\r\n", i % 128));
        }
        let desc = parse(&attributes).unwrap();
        assert_eq!(desc.media[0].rtpmap.len(), MAX_ATTRIBUTES_PER_MEDIA);
    }

    #[test]
    fn never_panics_on_mangled_input() {
        // Every prefix and every single-byte corruption of real offers.
        let mutations = [
            "=", ":", "/", " ", "\r", "\n", "\u{0}", "é", "9", "m=", "a=",
        ];
        for base in [SIPP, BARESIP, PBX_HOLD] {
            for (cut, _) in base.char_indices() {
                let _ = parse(&base[..cut]);
                for m in mutations {
                    let mut s = base[..cut].to_owned();
                    s.push_str(m);
                    s.push_str(base.get(cut + 1..).unwrap_or(""));
                    if let Ok(desc) = parse(&s)
                        && let Ok(n) = negotiate(&desc, &PREFS)
                    {
                        let _ = parse(&answer(&n, LOCAL, 1, 1, 1)).expect("answer parses");
                    }
                }
            }
        }
    }

    #[test]
    fn odd_but_valid_lines_are_tolerated() {
        let sdp = "v=0\n\no=- 1 1 IN IP4 10.0.0.1\ns=\nc=in ip4 10.0.0.1\nt=0 0\nx=unknown\n\
                   m=audio 4000/2 RTP/AVP 0\na=rtpmap:bogus\na=fmtp:zz x\na=ptime:soon\n\
                   a=rtpmap:0\n";
        let desc = parse(sdp).unwrap();
        let audio = &desc.media[0];
        assert_eq!(audio.port, 4000);
        assert!(audio.rtpmap.is_empty() && audio.fmtp.is_empty());
        assert_eq!(audio.ptime, None);
        assert_eq!(negotiated(sdp, &PREFS).codec, Codec::Pcmu);
    }
}
