#!/usr/bin/env python3
"""Writes the malformed-SIP corpus next to this script, byte for byte.

Run it from anywhere: `python3 sip/malformed/generate.py`. Each case is one
file named NN-what-is-wrong.OUTCOME.(sip|bin); see README.md for the outcomes
and the placeholders (__PORT__) the test substitutes before sending.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
CRLF = "\r\n"

SDP = CRLF.join([
    "v=0",
    "o=torture 1 1 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
    "",
])


def headers(slug, method="OPTIONS", cseq=None, omit=(), extra=(), via=None,
            to_tag=None, transport="UDP"):
    """The usual header lines of a request from the test's socket."""
    via = via or f"SIP/2.0/{transport} 127.0.0.1:__PORT__;branch=z9hG4bK-mf-{slug};rport"
    to = "<sip:izwi@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        ("Via", via),
        ("Max-Forwards", "70"),
        ("From", f"<sip:torture@127.0.0.1>;tag=mf-{slug}"),
        ("To", to),
        ("Call-ID", f"mf-{slug}@127.0.0.1"),
        ("CSeq", cseq or f"1 {method}"),
        ("Contact", "<sip:torture@127.0.0.1:__PORT__>"),
    ]
    lines = [(n, v) for n, v in lines if n not in omit]
    lines.extend(extra)
    return lines


def request(slug, method="OPTIONS", uri="sip:izwi@127.0.0.1", version="SIP/2.0",
            body="", content_length=None, start=None, **kw):
    """A request as bytes. content_length=None writes the true length; False omits it."""
    lines = [start if start is not None else f"{method} {uri} {version}"]
    lines += [f"{n}: {v}" for n, v in headers(slug, method, **kw)]
    if content_length is not False:
        cl = len(body.encode()) if content_length is None else content_length
        lines.append(f"Content-Length: {cl}")
    return (CRLF.join(lines) + CRLF + CRLF + body).encode()


def invite(slug, sdp, **kw):
    extra = [("Content-Type", "application/sdp")] + list(kw.pop("extra", ()))
    return request(slug, "INVITE", body=sdp, extra=extra, **kw)


def raw(text):
    return text.replace("\n", CRLF).encode()


# RFC 4475 §3.1.1.1 (wsinv) as an OPTIONS: folding, compact forms, odd case and
# whitespace, an escaped quote, unknown headers. Legal, so 200.
TORTUOUS = raw(
    "OPTIONS sip:izwi@127.0.0.1;unknownparam SIP/2.0\n"
    "TO :\n"
    " sip:izwi@127.0.0.1 ;   tag    = 1918181833n\n"
    "from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\n"
    "  ;\n"
    "  tag = 98asjd8\n"
    "MaX-fOrWaRdS: 0068\n"
    "Call-ID: mf-wsinv.ndaksdj@192.0.2.1\n"
    "Content-Length   : 0\n"
    "cseq: 0009\n"
    "  OPTIONS\n"
    "Via  : SIP  /   2.0\n"
    " /UDP\n"
    "    127.0.0.1:__PORT__;branch=z9hG4bK-mf-wsinv\n"
    "s :\n"
    "NewFangledHeader:   newfangled value\n"
    " continued newfangled value\n"
    "UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
    "Route:\n"
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\n"
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\n"
    "  branch  =   z9hG4bK9ikj8  ,\n"
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n"
    " z9hG4bK30239\n"
    "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\n"
    "      newvalue ;\n"
    "  secondparam ; q = 0.33\n"
    "\n"
)

# Compact forms only, and tabs around the colons: legal, so 200.
COMPACT = raw(
    "OPTIONS sip:izwi@127.0.0.1 SIP/2.0\n"
    "v:\tSIP/2.0/UDP 127.0.0.1:__PORT__;branch=z9hG4bK-mf-compact;rport\n"
    "f:\t<sip:torture@127.0.0.1>;tag=mf-compact\n"
    "t:\t<sip:izwi@127.0.0.1>\n"
    "i:\tmf-compact@127.0.0.1\n"
    "CSeq:\t1\tOPTIONS\n"
    "m:\t<sip:torture@127.0.0.1:__PORT__>\n"
    "l:\t0\n"
    "\n"
)

# RFC 4475 §3.1.1.2 (intmeth): an extension method full of legal token characters.
INTMETH_NAME = "!interesting-Method0123456789_*+`.%indeed'~"
INTMETH = request(
    "intmeth", INTMETH_NAME,
    uri="sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
)

STUN_BINDING = bytes.fromhex(
    "0001 0000 2112a442 6d616c666f726d6564303031".replace(" ", ""))

LONG_VALUE = "x" * 10_240
MANY_VIAS = [("Via", f"SIP/2.0/UDP 192.0.2.{i % 250 + 1}:5060;branch=z9hG4bK-mf-via{i}")
             for i in range(1, 500)]

GARBAGE = bytes((i * 197 + 101) % 256 for i in range(1, 700))

CASES = [
    # The start line.
    ("01-version-sip-3.0.505.sip", request("v3", version="SIP/3.0")),
    ("02-version-sip-1.0.505.sip", request("v1", version="SIP/1.0")),
    ("03-start-line-missing-uri.drop.sip", request("nouri", start="OPTIONS SIP/2.0")),
    ("04-start-line-lowercase-garbage.drop.sip",
     request("lower", start="hello there, this is not a request line")),
    ("05-lowercase-method.501.sip", request("lcmethod", "options")),
    # Mandatory headers.
    ("06-missing-via.drop.sip", request("novia", omit=("Via",))),
    ("07-missing-call-id.drop.sip", request("nocallid", omit=("Call-ID",))),
    ("08-missing-cseq.drop.sip", request("nocseq", omit=("CSeq",))),
    ("09-missing-from.drop.sip", request("nofrom", omit=("From",))),
    ("10-missing-to.drop.sip", request("noto", omit=("To",))),
    ("11-cseq-method-mismatch.400.sip", request("cseqmm", cseq="1 INVITE")),
    ("12-cseq-not-numeric.400.sip", request("cseqnan", cseq="one OPTIONS")),
    ("13-cseq-overflow.400.sip", request("cseqbig", cseq="36893488147419103232 OPTIONS")),
    ("14-via-without-branch.400.sip", request("nobranch", via="SIP/2.0/UDP 127.0.0.1:__PORT__")),
    ("15-header-without-colon.400.sip",
     request("nocolon", extra=[("Subject", "fine")]).replace(
         b"Subject: fine", b"This line has no colon at all")),
    # Content-Length.
    ("16-content-length-negative.400.sip", request("clneg", content_length=-5)),
    ("17-content-length-huge.400.sip", request("clhuge", content_length=99999999999999999999)),
    ("18-content-length-not-numeric.400.sip", request("clnan", content_length="ten")),
    ("19-content-length-longer-than-body.400.sip",
     request("cllong", body="hello", content_length=500, extra=[("Content-Type", "text/plain")])),
    ("20-content-length-shorter-than-body.200.sip",
     request("clshort", body="hello, and trailing junk", content_length=5,
             extra=[("Content-Type", "text/plain")])),
    # Size and repetition.
    ("21-header-value-10k.200.sip", request("long", extra=[("X-Long", LONG_VALUE)])),
    ("22-500-via-headers.200.sip", request("vias", extra=MANY_VIAS)),
    # Bytes that are not text.
    ("23-binary-garbage.drop.bin", GARBAGE),
    ("24-nul-in-header.400.sip",
     request("nul", extra=[("Subject", "before")]).replace(b"before", b"bef\x00ore")),
    ("25-invalid-utf8-header.drop.sip",
     request("utf8", extra=[("Subject", "before")]).replace(b"before", b"bef\xc3\x28\xff\xfeore")),
    ("26-stun-binding-request.drop.bin", STUN_BINDING),
    # Legal but unusual.
    ("27-tortuous-whitespace-folding.200.sip", TORTUOUS),
    ("28-compact-forms-and-tabs.200.sip", COMPACT),
    ("29-escaped-request-uri.200.sip",
     request("esc", uri="sip:sips%3Auser%40example.com@127.0.0.1;custom=%21%20")),
    ("30-lf-line-endings.200.sip", request("lf").replace(b"\r\n", b"\n")),
    # Methods and dialogs.
    ("31-unknown-method-foo.501.sip", request("foo", "FOO")),
    ("32-extension-method-rfc4475.501.sip", INTMETH),
    ("33-register.405.sip", request("register", "REGISTER")),
    ("34-bye-unknown-dialog.481.sip", request("byeghost", "BYE", cseq="2 BYE", to_tag="nosuch")),
    ("35-ack-missing-call-id.drop.sip", request("ackbad", "ACK", omit=("Call-ID",))),
    ("36-stray-200-response.drop.sip", raw(
        "SIP/2.0 200 OK\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-mf-nosuchtx\n"
        "From: <sip:izwi@127.0.0.1>;tag=mf-stray\n"
        "To: <sip:torture@127.0.0.1>;tag=mf-stray2\n"
        "Call-ID: mf-stray@127.0.0.1\n"
        "CSeq: 7 BYE\n"
        "Content-Length: 0\n"
        "\n")),
    ("37-crlf-keepalive.ignore.bin", b"\r\n\r\n"),
    ("38-empty-datagram.ignore.bin", b""),
    # Offers Izwi cannot take.
    ("39-invite-sdp-no-media.488.sip",
     invite("sdpnom", SDP.split("m=audio")[0])),
    ("40-invite-sdp-port-zero.488.sip",
     invite("sdpzero", SDP.replace("m=audio 4000", "m=audio 0"))),
    ("41-invite-sdp-port-99999.488.sip",
     invite("sdpbig", SDP.replace("m=audio 4000", "m=audio 99999"))),
    ("42-invite-sdp-port-not-numeric.488.sip",
     invite("sdpnan", SDP.replace("m=audio 4000", "m=audio four"))),
    ("43-invite-sdp-garbage.488.sip",
     invite("sdpjunk", "this is not a session description\r\n\x01\x02\x03\r\n")),
]

def tcp(slug, **kw):
    return request(slug, transport="TCP", **kw)


# Stream (TCP) framing: each file goes on its own connection.
TCP_CASES = [
    ("t01-content-length-missing.close.sip", tcp("tnocl", content_length=False)),
    ("t02-content-length-not-numeric.close.sip", tcp("tclnan", content_length="ten")),
    ("t03-content-length-negative.close.sip", tcp("tclneg", content_length=-1)),
    ("t04-content-length-over-limit.close.sip", tcp("tclbig", content_length=99999999)),
    ("t05-message-70k.close.sip", tcp("t70k", extra=[("X-Long", "y" * 70_000)])),
    ("t06-content-length-longer-than-body.wait.sip",
     tcp("tcllong", body="hello", content_length=500, extra=[("Content-Type", "text/plain")])),
    ("t07-crlf-keepalive-then-options.200.sip", b"\r\n\r\n" + tcp("tping") + b"\r\n\r\n"),
    ("t08-two-messages-in-one-write.200.sip", tcp("tpipe1") + tcp("tpipe2")),
]


def main():
    for folder, cases in ((HERE, CASES), (os.path.join(HERE, "tcp"), TCP_CASES)):
        os.makedirs(folder, exist_ok=True)
        for name, data in cases:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
