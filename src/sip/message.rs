//! Reading SIP messages off the wire (rsip does the grammar) and writing the
//! responses and requests a user agent sends. Header values are copied verbatim
//! where RFC 3261 asks for the request's own (Via, From, To, Call-ID, CSeq).

use std::net::SocketAddr;

use rsip::headers::ToTypedHeader;
use rsip::message::HeadersExt;
use rsip::{Header, Method, SipMessage};

/// Larger messages are dropped unread: no SIP message of ours needs more.
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("not a SIP message: {0}")]
    Syntax(String),
    #[error("missing or invalid {0} header")]
    Header(&'static str),
    #[error("Content-Length {declared} but {actual} bytes of body")]
    ContentLength { declared: usize, actual: usize },
}

/// The identity of a request or response: what transactions and dialogs key on.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub msg: SipMessage,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Method,
    /// Branch of the topmost Via (RFC 3261 magic cookie or not).
    pub branch: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    /// Every Via header line as received, in order (for responses).
    pub vias: Vec<String>,
    /// A request's Request-URI exactly as its request line has it (empty for
    /// a response): what a digest `uri` must equal.
    pub request_uri: String,
    /// The message's size on the wire, for memory budgets.
    pub size: usize,
}

impl Parsed {
    pub fn request(&self) -> Option<&rsip::Request> {
        match &self.msg {
            SipMessage::Request(r) => Some(r),
            SipMessage::Response(_) => None,
        }
    }

    pub fn body(&self) -> &[u8] {
        match &self.msg {
            SipMessage::Request(r) => &r.body,
            SipMessage::Response(r) => &r.body,
        }
    }

    pub fn header_value(&self, name: &str) -> Option<String> {
        headers(&self.msg)
            .iter()
            .find_map(|h| header_named(h, name).then(|| header_value(h)))
    }

    /// Every header as (name, value), at most `max` of them, each value cut
    /// to `max_len` characters: for routing, never stored.
    pub fn header_pairs(&self, max: usize, max_len: usize) -> Vec<(String, String)> {
        headers(&self.msg)
            .iter()
            .take(max)
            .map(|h| {
                let (n, v) = header_name_value(h);
                let v: String = v.chars().take(max_len).collect();
                (n, v)
            })
            .collect()
    }

    pub fn header_values(&self, name: &str) -> Vec<String> {
        headers(&self.msg)
            .iter()
            .filter(|h| header_named(h, name))
            .map(header_value)
            .collect()
    }
}

fn headers(msg: &SipMessage) -> &rsip::Headers {
    match msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    }
}

/// "Name: value" as rsip writes it, split back into its parts.
fn header_name_value(h: &Header) -> (String, String) {
    let line = h.to_string();
    match line.split_once(':') {
        Some((n, v)) => (n.trim().to_string(), v.trim().to_string()),
        None => (line, String::new()),
    }
}

fn header_named(h: &Header, name: &str) -> bool {
    header_name_value(h).0.eq_ignore_ascii_case(name)
}

fn header_value(h: &Header) -> String {
    header_name_value(h).1
}

/// RFC 3261 §7.3.3 compact forms, which rsip does not know.
fn expand_compact(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "v" => "Via",
        "f" => "From",
        "t" => "To",
        "i" => "Call-ID",
        "m" => "Contact",
        "l" => "Content-Length",
        "c" => "Content-Type",
        "k" => "Supported",
        "s" => "Subject",
        "e" => "Content-Encoding",
        _ => name,
    }
}

/// Headers whose parameters rsip reads, and which it cannot read with the linear
/// whitespace RFC 3261 allows in them.
const STRUCTURED: [&str; 7] = [
    "Via",
    "From",
    "To",
    "Contact",
    "CSeq",
    "Route",
    "Record-Route",
];

/// RFC 3261 §25.1 lets linear whitespace (spaces and tabs, SWS/LWS) run on and
/// surround `;` and `=` (`<sip:a@b> ; tag = 1`, `CSeq: 1<TAB>INVITE`); rsip takes
/// neither. Outside quoted strings, each run becomes one space, and none is left
/// around `;` and `=`.
fn canonical_whitespace(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let (mut quoted, mut escaped, mut space, mut separator) = (false, false, false, false);
    for c in value.chars() {
        if quoted {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            ' ' | '\t' => space = true,
            ';' | '=' => {
                out.push(c);
                (space, separator) = (false, true);
            }
            _ => {
                if space && !separator && !out.is_empty() {
                    out.push(' ');
                }
                out.push(c);
                quoted = c == '"';
                (space, separator) = (false, false);
            }
        }
    }
    out
}

/// Unfolds continuation lines, expands compact header names and splits the body,
/// checking Content-Length (RFC 3261 §18.3: a longer body is truncated, a shorter
/// one is an error).
fn normalise(bytes: &[u8]) -> Result<Vec<u8>, ParseError> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            bytes
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .ok_or_else(|| ParseError::Syntax("no end of headers".into()))?;
    let head = std::str::from_utf8(&bytes[..split.0])
        .map_err(|_| ParseError::Syntax("headers are not UTF-8".into()))?;
    // RFC 3261 §25.1: no control characters in a header but HTAB (and the CRLFs
    // that end lines).
    if head
        .chars()
        .any(|c| c.is_ascii_control() && !matches!(c, '\t' | '\r' | '\n'))
    {
        return Err(ParseError::Syntax(
            "control character in the headers".into(),
        ));
    }
    let mut body = &bytes[split.1..];
    let mut lines: Vec<String> = Vec::new();
    for line in head.split('\n') {
        let line = line.trim_end_matches('\r');
        if (line.starts_with(' ') || line.starts_with('\t')) && !lines.is_empty() {
            if let Some(last) = lines.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
            continue;
        }
        lines.push(line.to_string());
    }
    let mut declared = None;
    let mut out = String::with_capacity(head.len() + 64);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            if let Some((name, value)) = line.split_once(':') {
                let name = expand_compact(name.trim());
                if name.eq_ignore_ascii_case("Content-Length") {
                    declared = Some(
                        value
                            .trim()
                            .parse::<usize>()
                            .map_err(|_| ParseError::Header("Content-Length"))?,
                    );
                }
                out.push_str(name);
                out.push_str(": ");
                if STRUCTURED.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    out.push_str(&canonical_whitespace(value.trim()));
                } else {
                    out.push_str(value.trim());
                }
            } else if !line.is_empty() {
                return Err(ParseError::Syntax("header line without a colon".into()));
            }
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    if let Some(n) = declared {
        if n > body.len() {
            return Err(ParseError::ContentLength {
                declared: n,
                actual: body.len(),
            });
        }
        body = &body[..n];
    }
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    Ok(v)
}

pub fn parse(bytes: &[u8]) -> Result<Parsed, ParseError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(ParseError::TooLarge(bytes.len()));
    }
    let clean = normalise(bytes)?;
    let msg =
        SipMessage::try_from(clean.as_slice()).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let call_id = msg
        .call_id_header()
        .map_err(|_| ParseError::Header("Call-ID"))?
        .to_string();
    let call_id = call_id
        .split_once(':')
        .map_or(call_id.as_str(), |(_, v)| v)
        .trim()
        .to_string();
    if call_id.is_empty() {
        return Err(ParseError::Header("Call-ID"));
    }
    let cseq = msg
        .cseq_header()
        .map_err(|_| ParseError::Header("CSeq"))?
        .typed()
        .map_err(|_| ParseError::Header("CSeq"))?;
    let from = msg.from_header().map_err(|_| ParseError::Header("From"))?;
    let from_tag = from
        .tag()
        .map_err(|_| ParseError::Header("From"))?
        .map(|t| t.to_string());
    let to = msg.to_header().map_err(|_| ParseError::Header("To"))?;
    let to_tag = to
        .tag()
        .map_err(|_| ParseError::Header("To"))?
        .map(|t| t.to_string());
    let vias: Vec<String> = headers(&msg)
        .iter()
        .filter(|h| matches!(h, Header::Via(_)))
        .map(header_value)
        .collect();
    let top = vias.first().ok_or(ParseError::Header("Via"))?;
    let branch = via_param(top, "branch").ok_or(ParseError::Header("Via"))?;
    if let SipMessage::Request(r) = &msg {
        // rsip takes SIP/1.0 and any case of a method name; the RFC 3261 ABNF has
        // methods case-sensitive, so `options` is some other, unknown method.
        if r.version != rsip::Version::V2 {
            return Err(ParseError::Syntax("unsupported SIP version".into()));
        }
        if !clean.starts_with(format!("{} ", r.method).as_bytes()) {
            return Err(ParseError::Syntax("unknown method".into()));
        }
        if r.method != cseq.method && r.method != Method::Ack && r.method != Method::Cancel {
            return Err(ParseError::Header("CSeq"));
        }
    }
    let request_uri = match &msg {
        SipMessage::Request(_) => clean
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .and_then(|line| line.split(|b| *b == b' ').nth(1))
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default(),
        SipMessage::Response(_) => String::new(),
    };
    Ok(Parsed {
        call_id,
        request_uri,
        size: bytes.len(),
        cseq: cseq.seq,
        cseq_method: cseq.method,
        branch,
        from_tag,
        to_tag,
        vias,
        msg,
    })
}

/// A parameter of the first Via value in a header line (which may list several).
pub fn via_param(via: &str, name: &str) -> Option<String> {
    let first = via.split(',').next()?;
    first.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The topmost Via with `received` and `rport` filled in (RFC 3261 §18.2.1, RFC 3581),
/// so that responses find their way back through NAT.
fn stamped_via(via: &str, source: SocketAddr) -> String {
    let (first, rest) = match via.find(',') {
        Some(i) => (&via[..i], Some(&via[i..])),
        None => (via, None),
    };
    let mut parts: Vec<String> = Vec::new();
    let mut had_rport = false;
    for (i, p) in first.split(';').enumerate() {
        let key = p
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0 && key == "received" {
            continue;
        }
        if i > 0 && key == "rport" {
            had_rport = true;
            continue;
        }
        parts.push(p.trim().to_string());
    }
    parts.push(format!("received={}", source.ip()));
    if had_rport {
        parts.push(format!("rport={}", source.port()));
    }
    let mut out = parts.join(";");
    if let Some(r) = rest {
        out.push_str(r);
    }
    out
}

/// What the user agent puts in every message it sends.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_agent: String,
    /// `sip:izwi@host:port;transport=…` advertised in Contact.
    pub contact: String,
}

pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY";

/// A response to `req` (received from `source`). `to_tag` is added to To when the
/// request's To has none.
pub fn response(
    req: &Parsed,
    source: SocketAddr,
    (code, reason): (u16, &str),
    to_tag: Option<&str>,
    id: &Identity,
    extra: &[(&str, String)],
    body: Option<(&str, &str)>,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for (i, via) in req.vias.iter().enumerate() {
        let v = if i == 0 {
            stamped_via(via, source)
        } else {
            via.clone()
        };
        out.push_str(&format!("Via: {v}\r\n"));
    }
    let from = req.header_value("From").unwrap_or_default();
    out.push_str(&format!("From: {from}\r\n"));
    let mut to = req.header_value("To").unwrap_or_default();
    if req.to_tag.is_none()
        && let Some(tag) = to_tag
    {
        to.push_str(&format!(";tag={tag}"));
    }
    out.push_str(&format!("To: {to}\r\n"));
    out.push_str(&format!("Call-ID: {}\r\n", req.call_id));
    out.push_str(&format!("CSeq: {} {}\r\n", req.cseq, req.cseq_method));
    // Record-Route is echoed in responses that establish a dialog (RFC 3261 §12.1.1).
    if (101..300).contains(&code) && req.cseq_method == Method::Invite {
        for rr in req.header_values("Record-Route") {
            out.push_str(&format!("Record-Route: {rr}\r\n"));
        }
    }
    out.push_str(&format!("Server: {}\r\n", id.user_agent));
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    finish(out, body)
}

fn finish(mut out: String, body: Option<(&str, &str)>) -> String {
    match body {
        Some((ctype, b)) => {
            out.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

/// The parts of a request inside a dialog (BYE, re-INVITE), RFC 3261 §12.2.1.1.
pub struct DialogRequest<'a> {
    pub method: &'a str,
    /// The remote target (their Contact).
    pub target: &'a str,
    /// Route set from Record-Route.
    pub route: &'a [String],
    pub via_host: &'a str,
    pub transport: &'a str,
    pub branch: &'a str,
    /// Our end of the dialog (with our tag) and theirs.
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    /// Our Contact for this dialog.
    pub contact: &'a str,
    /// Headers of the method (REFER's Refer-To, …).
    pub extra: &'a [(&'a str, String)],
}

pub fn in_dialog_request(
    r: &DialogRequest<'_>,
    id: &Identity,
    body: Option<(&str, &str)>,
) -> String {
    let DialogRequest {
        method,
        target,
        route,
        via_host,
        transport,
        branch,
        from,
        to,
        call_id,
        cseq,
        contact,
        extra,
    } = *r;
    let mut out = format!("{method} {target} SIP/2.0\r\n");
    out.push_str(&format!(
        "Via: SIP/2.0/{transport} {via_host};branch={branch};rport\r\n"
    ));
    out.push_str("Max-Forwards: 70\r\n");
    for r in route {
        out.push_str(&format!("Route: {r}\r\n"));
    }
    out.push_str(&format!(
        "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
    ));
    out.push_str(&format!(
        "Contact: <{contact}>\r\nUser-Agent: {}\r\n",
        id.user_agent
    ));
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    finish(out, body)
}

/// The URI inside a name-addr (`"Bob" <sip:bob@x>;tag=1` → `sip:bob@x`) or a bare addr-spec.
pub fn uri_of(name_addr: &str) -> String {
    if let (Some(a), Some(b)) = (name_addr.find('<'), name_addr.find('>'))
        && a < b
    {
        return name_addr[a + 1..b].trim().to_string();
    }
    name_addr.split(';').next().unwrap_or("").trim().to_string()
}

/// A fresh random token for tags and branches.
pub fn token(prefix: &str) -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{prefix}{n:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const INVITE: &str = "INVITE sip:izwi@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport\r\n\
Max-Forwards: 70\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=abc\r\n\
To: <sip:izwi@127.0.0.1:5060>\r\n\
Call-ID: call-1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:sipp@127.0.0.1:5061>\r\n\
Record-Route: <sip:proxy.example;lr>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    fn id() -> Identity {
        Identity {
            user_agent: "izwi".into(),
            contact: "sip:izwi@127.0.0.1:5060".into(),
        }
    }

    #[test]
    fn parses_the_identity_of_an_invite() {
        let p = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(p.call_id, "call-1@127.0.0.1");
        assert_eq!(p.cseq, 1);
        assert_eq!(p.cseq_method, Method::Invite);
        assert_eq!(p.branch, "z9hG4bK-1");
        assert_eq!(p.from_tag.as_deref(), Some("abc"));
        assert_eq!(p.to_tag, None);
        assert_eq!(p.body(), b"v=0\n");
        assert_eq!(
            p.header_values("Record-Route"),
            vec!["<sip:proxy.example;lr>"]
        );
    }

    #[test]
    fn compact_and_folded_headers() {
        let m = "OPTIONS sip:izwi@h SIP/2.0\r\nv: SIP/2.0/UDP h:1;branch=z9hG4bKx\r\nf: <sip:a@h>;tag=1\r\nt: <sip:izwi@h>\r\ni: x\r\n  y\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n\r\n";
        let p = parse(m.as_bytes()).unwrap();
        assert_eq!(p.call_id, "x y");
        assert_eq!(p.branch, "z9hG4bKx");
    }

    #[test]
    fn content_length_is_enforced() {
        let short = INVITE.replace("Content-Length: 4", "Content-Length: 40");
        assert!(matches!(
            parse(short.as_bytes()),
            Err(ParseError::ContentLength { .. })
        ));
        let long = INVITE.replace("Content-Length: 4", "Content-Length: 2");
        assert_eq!(parse(long.as_bytes()).unwrap().body(), b"v=");
    }

    #[test]
    fn legal_linear_whitespace_in_parameters() {
        // RFC 4475 §3.1.1.1 (wsinv) style: SWS around `;` and `=`, tabs, folding.
        let m = "OPTIONS sip:izwi@h;unknownparam SIP/2.0\r\nTO :\r\n sip:izwi@h ;   tag    = 1918181833n\r\nfrom   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\nCall-ID: ws\r\ncseq: 0009\r\n  \tOPTIONS\r\nVia  : SIP  /   2.0\r\n /UDP\r\n    h:1 ; branch = z9hG4bKws\r\nm:\"Quoted ; = string\" <sip:jd@example.com> ; q = 0.33\r\nl: 0\r\n\r\n";
        let p = parse(m.as_bytes()).unwrap();
        assert_eq!(p.from_tag.as_deref(), Some("98asjd8"));
        assert_eq!(p.to_tag.as_deref(), Some("1918181833n"));
        assert_eq!((p.cseq, p.cseq_method), (9, Method::Options));
        assert_eq!(p.branch, "z9hG4bKws");
        assert_eq!(
            p.header_value("From").unwrap(),
            "\"J Rosenberg \\\\\\\"\" <sip:jdrosen@example.com>;tag=98asjd8"
        );
        // Quoted strings keep their spaces and separators.
        assert_eq!(
            p.header_value("Contact").unwrap(),
            "\"Quoted ; = string\" <sip:jd@example.com>;q=0.33"
        );
        let tab = INVITE.replace("CSeq: 1 INVITE", "CSeq: 1\tINVITE");
        assert_eq!(parse(tab.as_bytes()).unwrap().cseq_method, Method::Invite);
    }

    #[test]
    fn other_versions_method_case_and_control_characters_are_errors() {
        for bad in [
            INVITE.replacen("SIP/2.0", "SIP/1.0", 1),
            INVITE.replacen("INVITE sip:", "invite sip:", 1),
            INVITE.replace("Max-Forwards: 70", "Max-Forwards: 7\u{0}0"),
            INVITE.replace("Max-Forwards: 70", "Subject: \u{1b}[2J"),
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(ParseError::Syntax(_))),
                "{bad}"
            );
        }
        // Tabs are whitespace, not control characters.
        let tab = INVITE.replace("Max-Forwards: 70", "Subject:\ta\tb");
        assert!(parse(tab.as_bytes()).is_ok());
    }

    #[test]
    fn missing_mandatory_headers_are_named() {
        for (h, name) in [
            ("Call-ID", "Call-ID"),
            ("CSeq", "CSeq"),
            ("From", "From"),
            ("Via", "Via"),
        ] {
            let m: String = INVITE
                .split("\r\n")
                .filter(|l| !l.starts_with(&format!("{h}:")))
                .collect::<Vec<_>>()
                .join("\r\n");
            match parse(m.as_bytes()) {
                Err(ParseError::Header(n)) => assert_eq!(n, name),
                Err(ParseError::Syntax(_)) => {}
                other => panic!("{h}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 1u64;
        for len in [0usize, 1, 4, 10, 100, 1000] {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (seed >> 56) as u8
                    })
                    .collect();
                let _ = parse(&bytes);
            }
        }
        // Truncations of a valid message at every byte.
        for i in 0..INVITE.len() {
            let _ = parse(&INVITE.as_bytes()[..i]);
        }
        assert!(matches!(
            parse(&vec![b'a'; MAX_MESSAGE + 1]),
            Err(ParseError::TooLarge(_))
        ));
    }

    #[test]
    fn responses_echo_the_request_and_stamp_the_via() {
        let p = parse(INVITE.as_bytes()).unwrap();
        let src: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let r = response(
            &p,
            src,
            (200, "OK"),
            Some("t1"),
            &id(),
            &[("Contact", "<sip:izwi@h>".into())],
            Some(("application/sdp", "v=0\r\n")),
        );
        let back = parse(r.as_bytes()).unwrap();
        assert_eq!(back.call_id, p.call_id);
        assert_eq!(back.to_tag.as_deref(), Some("t1"));
        assert_eq!(back.from_tag.as_deref(), Some("abc"));
        assert!(r.contains("received=10.0.0.9;rport=4000"), "{r}");
        assert!(r.contains("Record-Route: <sip:proxy.example;lr>"), "{r}");
        assert_eq!(back.body(), b"v=0\r\n");
        let r = response(&p, src, (486, "Busy Here"), Some("t1"), &id(), &[], None);
        assert!(!r.contains("Record-Route"));
    }

    #[test]
    fn uri_extraction() {
        assert_eq!(uri_of("\"Bob\" <sip:bob@x:5060>;tag=1"), "sip:bob@x:5060");
        assert_eq!(uri_of("sip:bob@x;tag=1"), "sip:bob@x");
    }
}
