// SPDX-License-Identifier: GPL-2.0
//! IPv4 and TCP headers over byte slices: validated parsing, option parsing, in-place
//! rewriting with incremental checksum updates, and building segments from scratch.
//!
//! Parsers never trust a length field: every offset is checked against the slice
//! before use, and malformed input is an error, never a panic. The functions take
//! the packet starting at the IPv4 header, which is how netfilter hooks see it.

use super::csum;
use super::seq::Seq;

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Minimum IPv4 header length.
pub const IPV4_MIN_HLEN: usize = 20;
/// Minimum TCP header length.
pub const TCP_MIN_HLEN: usize = 20;
/// Offset of the checksum field in the TCP header.
const TCP_CHECK: usize = 16;
/// Offset of the checksum field in the IPv4 header.
const IP_CHECK: usize = 10;

/// Why a packet was not accepted as IPv4/TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The buffer ends before a header or a length field says it should.
    Truncated,
    /// IP version is not 4.
    NotIpv4,
    /// IHL below 5 or beyond the packet.
    BadHeaderLength,
    /// Total length below the header length or beyond the buffer.
    BadTotalLength,
    /// A fragment: TCP headers of fragments are not interpreted.
    Fragment,
    /// The IP protocol is not TCP.
    NotTcp,
    /// TCP data offset below 5 or beyond the segment.
    BadDataOffset,
    /// A TCP option with a length that is too short, too long or wrong for its kind.
    BadOption,
    /// The output buffer is too small for the segment to build.
    NoRoom,
}

impl ParseError {
    /// A short, stable name for counters and log lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParseError::Truncated => "truncated",
            ParseError::NotIpv4 => "not-ipv4",
            ParseError::BadHeaderLength => "bad-ip-header-length",
            ParseError::BadTotalLength => "bad-ip-total-length",
            ParseError::Fragment => "fragment",
            ParseError::NotTcp => "not-tcp",
            ParseError::BadDataOffset => "bad-tcp-data-offset",
            ParseError::BadOption => "bad-tcp-option",
            ParseError::NoRoom => "no-room",
        }
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> Result<u16, ParseError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(ParseError::Truncated),
    }
}

#[inline]
fn be32(b: &[u8], at: usize) -> Result<u32, ParseError> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => Err(ParseError::Truncated),
    }
}

#[inline]
fn addr(b: &[u8], at: usize) -> Result<[u8; 4], ParseError> {
    Ok(be32(b, at)?.to_be_bytes())
}

/// A validated IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Header length in bytes (IHL * 4), at least 20.
    pub header_len: usize,
    /// Total length in bytes; `header_len <= total_len <= buffer length`.
    pub total_len: usize,
    /// Identification field.
    pub id: u16,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol number.
    pub protocol: u8,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

impl Ipv4Header {
    /// Parse and validate the IPv4 header at the start of `pkt`.
    pub fn parse(pkt: &[u8]) -> Result<Self, ParseError> {
        Self::parse_headers(pkt, pkt.len())
    }

    /// Parse the IPv4 header at the start of `head`, the contiguous first part of a
    /// packet that is `pkt_len` bytes long in all (a kernel buffer's payload may sit
    /// in page fragments). The header must lie in `head`; the total length is checked
    /// against `pkt_len`.
    pub fn parse_headers(pkt: &[u8], pkt_len: usize) -> Result<Self, ParseError> {
        let first = *pkt.first().ok_or(ParseError::Truncated)?;
        if first >> 4 != 4 {
            return Err(ParseError::NotIpv4);
        }
        let header_len = ((first & 0x0f) as usize) * 4;
        if header_len < IPV4_MIN_HLEN {
            return Err(ParseError::BadHeaderLength);
        }
        if pkt.len() < header_len {
            return Err(ParseError::Truncated);
        }
        let total_len = be16(pkt, 2)? as usize;
        if total_len < header_len || total_len > pkt_len.max(pkt.len()) {
            return Err(ParseError::BadTotalLength);
        }
        let frag = be16(pkt, 6)?;
        Ok(Ipv4Header {
            header_len,
            total_len,
            id: be16(pkt, 4)?,
            more_fragments: frag & 0x2000 != 0,
            fragment_offset: frag & 0x1fff,
            ttl: pkt[8],
            protocol: pkt[9],
            src: addr(pkt, 12)?,
            dst: addr(pkt, 16)?,
        })
    }

    /// True for any fragment, first or later.
    pub const fn is_fragment(&self) -> bool {
        self.more_fragments || self.fragment_offset != 0
    }
}

/// TCP header flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;

    /// True when every bit of `mask` is set.
    #[inline]
    pub const fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
}

/// A validated TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: Seq,
    /// Acknowledgment number (meaningful when ACK is set).
    pub ack: Seq,
    /// Header length in bytes, options included; `20 <= header_len <= segment length`.
    pub header_len: usize,
    /// Flags.
    pub flags: TcpFlags,
    /// Raw (unscaled) window.
    pub window: u16,
    /// Checksum field as found.
    pub checksum: u16,
    /// Urgent pointer.
    pub urgent: u16,
}

impl TcpHeader {
    /// Parse and validate the TCP header at the start of `seg` (header + payload).
    pub fn parse(seg: &[u8]) -> Result<Self, ParseError> {
        if seg.len() < TCP_MIN_HLEN {
            return Err(ParseError::Truncated);
        }
        let header_len = ((seg[12] >> 4) as usize) * 4;
        if header_len < TCP_MIN_HLEN || header_len > seg.len() {
            return Err(ParseError::BadDataOffset);
        }
        Ok(TcpHeader {
            src_port: be16(seg, 0)?,
            dst_port: be16(seg, 2)?,
            seq: Seq(be32(seg, 4)?),
            ack: Seq(be32(seg, 8)?),
            header_len,
            flags: TcpFlags(seg[13]),
            window: be16(seg, 14)?,
            checksum: be16(seg, 16)?,
            urgent: be16(seg, 18)?,
        })
    }
}

/// A validated IPv4 packet carrying a complete (unfragmented) TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Tcp {
    /// The IPv4 header.
    pub ip: Ipv4Header,
    /// The TCP header.
    pub tcp: TcpHeader,
}

impl Ipv4Tcp {
    /// Parse `pkt` (starting at the IPv4 header). Bytes beyond the IP total length
    /// (link-layer padding) are ignored.
    pub fn parse(pkt: &[u8]) -> Result<Self, ParseError> {
        Self::parse_headers(pkt, pkt.len())
    }

    /// Parse the headers of a packet of `pkt_len` bytes whose contiguous first part is
    /// `head`. Both headers, options included, must lie in `head`; the payload need not.
    pub fn parse_headers(head: &[u8], pkt_len: usize) -> Result<Self, ParseError> {
        let ip = Ipv4Header::parse_headers(head, pkt_len)?;
        if ip.protocol != IPPROTO_TCP {
            return Err(ParseError::NotTcp);
        }
        if ip.is_fragment() {
            return Err(ParseError::Fragment);
        }
        let seg_len = ip.total_len - ip.header_len;
        let tcp_head = &head[ip.header_len..head.len().min(ip.total_len)];
        if seg_len < TCP_MIN_HLEN {
            return Err(ParseError::Truncated);
        }
        let tcp = TcpHeader::parse(tcp_head)?;
        if tcp.header_len > seg_len {
            return Err(ParseError::BadDataOffset);
        }
        Ok(Ipv4Tcp { ip, tcp })
    }

    /// Offset of the TCP header in the packet.
    pub const fn tcp_offset(&self) -> usize {
        self.ip.header_len
    }

    /// Offset of the TCP payload in the packet.
    pub const fn payload_offset(&self) -> usize {
        self.ip.header_len + self.tcp.header_len
    }

    /// Payload length in bytes.
    pub const fn payload_len(&self) -> usize {
        self.ip.total_len - self.payload_offset()
    }

    /// Sequence space the segment occupies: payload plus one for SYN and for FIN.
    pub const fn seq_len(&self) -> u32 {
        self.payload_len() as u32
            + self.tcp.flags.has(TcpFlags::SYN) as u32
            + self.tcp.flags.has(TcpFlags::FIN) as u32
    }

    /// The TCP option bytes of `pkt`, which must be the packet this was parsed from.
    pub fn options<'a>(&self, pkt: &'a [u8]) -> &'a [u8] {
        &pkt[self.tcp_offset() + TCP_MIN_HLEN..self.payload_offset()]
    }
}

/// TCP option kinds Lazarus interprets.
pub mod opt {
    /// End of option list.
    pub const EOL: u8 = 0;
    /// No-operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size.
    pub const MSS: u8 = 2;
    /// Window scale.
    pub const WSCALE: u8 = 3;
    /// SACK permitted.
    pub const SACK_PERM: u8 = 4;
    /// SACK blocks.
    pub const SACK: u8 = 5;
    /// Timestamps.
    pub const TIMESTAMP: u8 = 8;
}

/// One TCP option found by [`OptionIter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOption<'a> {
    /// Offset of the option's kind byte within the option area.
    pub offset: usize,
    /// Option kind.
    pub kind: u8,
    /// Option data (after kind and length).
    pub data: &'a [u8],
}

/// Iterates over the options of a TCP header. Yields `Err(BadOption)` once and stops
/// when an option's length is impossible; stops quietly at EOL.
pub struct OptionIter<'a> {
    opts: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> OptionIter<'a> {
    /// Iterate over the option area `opts` (the bytes between the fixed header and
    /// the payload).
    pub fn new(opts: &'a [u8]) -> Self {
        OptionIter { opts, at: 0, failed: false }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<TcpOption<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.at < self.opts.len() {
            let kind = self.opts[self.at];
            match kind {
                opt::EOL => return None,
                opt::NOP => self.at += 1,
                _ => {
                    let len = match self.opts.get(self.at + 1) {
                        Some(&l) => l as usize,
                        None => 0,
                    };
                    if len < 2 || self.at + len > self.opts.len() || !length_ok(kind, len) {
                        self.failed = true;
                        return Some(Err(ParseError::BadOption));
                    }
                    let o = TcpOption {
                        offset: self.at,
                        kind,
                        data: &self.opts[self.at + 2..self.at + len],
                    };
                    self.at += len;
                    return Some(Ok(o));
                }
            }
        }
        None
    }
}

/// Fixed lengths of the options we interpret (RFC 9293, 7323, 2018).
const fn length_ok(kind: u8, len: usize) -> bool {
    match kind {
        opt::MSS => len == 4,
        opt::WSCALE => len == 3,
        opt::SACK_PERM => len == 2,
        opt::SACK => len >= 10 && (len - 2) % 8 == 0 && len <= 34,
        opt::TIMESTAMP => len == 10,
        _ => true,
    }
}

/// The options of a TCP header that matter to connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// Maximum segment size (SYN only).
    pub mss: Option<u16>,
    /// Window scale shift, as sent (RFC 7323 caps its use at 14).
    pub wscale: Option<u8>,
    /// SACK permitted (SYN only).
    pub sack_permitted: bool,
    /// Timestamp value and echo reply.
    pub timestamp: Option<(u32, u32)>,
    /// SACK blocks: `[left, right)` pairs; the first `sack_count` are valid.
    pub sack: [(Seq, Seq); 4],
    /// Number of valid SACK blocks.
    pub sack_count: u8,
}

impl TcpOptions {
    /// Parse an option area. Unknown options are skipped; malformed ones are errors.
    pub fn parse(opts: &[u8]) -> Result<Self, ParseError> {
        let mut out = TcpOptions::default();
        for o in OptionIter::new(opts) {
            let o = o?;
            let d = o.data;
            match o.kind {
                opt::MSS => out.mss = Some(u16::from_be_bytes([d[0], d[1]])),
                opt::WSCALE => out.wscale = Some(d[0]),
                opt::SACK_PERM => out.sack_permitted = true,
                opt::TIMESTAMP => {
                    out.timestamp = Some((be32(d, 0)?, be32(d, 4)?));
                }
                opt::SACK => {
                    out.sack_count = 0;
                    for (i, b) in d.chunks_exact(8).enumerate() {
                        out.sack[i] = (Seq(be32(b, 0)?), Seq(be32(b, 4)?));
                        out.sack_count += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The valid SACK blocks.
    pub fn sack_blocks(&self) -> &[(Seq, Seq)] {
        &self.sack[..self.sack_count as usize]
    }
}

/// How the TCP checksum field of a packet is to be kept valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsumMode {
    /// The field is a complete checksum (the kernel's `CHECKSUM_NONE`,
    /// `CHECKSUM_UNNECESSARY` or `CHECKSUM_COMPLETE`): every change updates it.
    Full,
    /// The kernel's `CHECKSUM_PARTIAL`: the field holds the pseudo-header sum and the
    /// rest is added at transmit time, so only pseudo-header changes update it.
    Partial,
}

/// Rewrites header fields of one IPv4/TCP packet in place, keeping the IPv4 and TCP
/// checksums valid with RFC 1624 incremental updates.
///
/// # Invariants
///
/// `pkt` held a packet that [`Ipv4Tcp::parse`] accepted when the rewriter was made,
/// and the rewriter only changes fixed-size fields, so every offset it uses stays in
/// bounds.
pub struct Rewriter<'a> {
    pkt: &'a mut [u8],
    parsed: Ipv4Tcp,
    mode: CsumMode,
}

impl<'a> Rewriter<'a> {
    /// Validate `pkt` and wrap it for rewriting.
    pub fn new(pkt: &'a mut [u8], mode: CsumMode) -> Result<Self, ParseError> {
        let len = pkt.len();
        Self::new_headers(pkt, len, mode)
    }

    /// Like [`Rewriter::new`] for a packet of `pkt_len` bytes of which `head` is the
    /// contiguous first part holding both headers. Only header fields are rewritten.
    pub fn new_headers(head: &'a mut [u8], pkt_len: usize, mode: CsumMode) -> Result<Self, ParseError> {
        let parsed = Ipv4Tcp::parse_headers(head, pkt_len)?;
        Ok(Rewriter { pkt: head, parsed, mode })
    }

    /// The headers as parsed before any rewrite.
    pub fn parsed(&self) -> &Ipv4Tcp {
        &self.parsed
    }

    fn tcp_at(&self, field: usize) -> usize {
        self.parsed.tcp_offset() + field
    }

    fn get16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.pkt[at], self.pkt[at + 1]])
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.pkt[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn get32(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.pkt[at], self.pkt[at + 1], self.pkt[at + 2], self.pkt[at + 3]])
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.pkt[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// Replace a 16-bit word covered by the TCP checksum but not by the pseudo-header,
    /// at any offset in the TCP header (option fields need not be 16-bit aligned).
    fn replace16(&mut self, at: usize, new: u16) {
        let old = self.get16(at);
        if old == new {
            return;
        }
        self.put16(at, new);
        if self.mode == CsumMode::Full {
            let c = self.tcp_at(TCP_CHECK);
            let check = if (at - self.parsed.tcp_offset()) % 2 == 0 {
                csum::update16(self.get16(c), old, new)
            } else {
                // Odd alignment: byte-swapping the sum aligns the field (RFC 1071 §2(B)).
                csum::update16(self.get16(c).swap_bytes(), old, new).swap_bytes()
            };
            self.put16(c, check);
        }
    }

    /// Replace a 32-bit word covered by the TCP checksum but not by the pseudo-header.
    /// `at` may be unaligned to 16 bits inside options (SACK, timestamps are at
    /// even offsets only after NOP padding), so odd offsets are updated bytewise.
    fn replace32(&mut self, at: usize, new: u32) {
        let old = self.get32(at);
        if old == new {
            return;
        }
        self.put32(at, new);
        if self.mode == CsumMode::Full {
            let c = self.tcp_at(TCP_CHECK);
            let check = if (at - self.parsed.tcp_offset()) % 2 == 0 {
                csum::update32(self.get16(c), old, new)
            } else {
                // Odd alignment: the field straddles three checksum words. Shifting
                // by 8 bits aligns it; the one's-complement sum is byte-order
                // independent up to a byte swap (RFC 1071 §2(B)).
                let swapped = csum::update32(self.get16(c).swap_bytes(), old, new);
                swapped.swap_bytes()
            };
            self.put16(c, check);
        }
    }

    /// Replace an address, which is covered by the IPv4 header checksum and by the
    /// TCP pseudo-header.
    fn replace_addr(&mut self, at: usize, new: [u8; 4]) {
        let old = self.get32(at);
        let new = u32::from_be_bytes(new);
        if old == new {
            return;
        }
        self.put32(at, new);
        let ipc = self.get16(IP_CHECK);
        self.put16(IP_CHECK, csum::update32(ipc, old, new));
        let c = self.tcp_at(TCP_CHECK);
        let check = match self.mode {
            CsumMode::Full => csum::update32(self.get16(c), old, new),
            CsumMode::Partial => csum::update32_partial(self.get16(c), old, new),
        };
        self.put16(c, check);
    }

    /// Set the sequence number.
    pub fn set_seq(&mut self, s: Seq) {
        self.replace32(self.tcp_at(4), s.0);
    }

    /// Set the acknowledgment number.
    pub fn set_ack(&mut self, s: Seq) {
        self.replace32(self.tcp_at(8), s.0);
    }

    /// Set the raw window field.
    pub fn set_window(&mut self, w: u16) {
        self.replace16(self.tcp_at(14), w);
    }

    /// Set the source port.
    pub fn set_src_port(&mut self, p: u16) {
        self.replace16(self.tcp_at(0), p);
    }

    /// Set the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        self.replace16(self.tcp_at(2), p);
    }

    /// Set the source address.
    pub fn set_src_addr(&mut self, a: [u8; 4]) {
        self.replace_addr(12, a);
    }

    /// Set the destination address.
    pub fn set_dst_addr(&mut self, a: [u8; 4]) {
        self.replace_addr(16, a);
    }

    /// Map every SACK block edge through `f` (for example a sequence offset).
    /// Returns the number of blocks rewritten.
    pub fn map_sack(&mut self, f: impl Fn(Seq) -> Seq) -> Result<usize, ParseError> {
        let base = self.tcp_at(TCP_MIN_HLEN);
        let end = self.parsed.payload_offset();
        // Collect positions first: the iterator borrows the packet immutably.
        let mut spots = [0usize; 8];
        let mut n = 0;
        for o in OptionIter::new(&self.pkt[base..end]) {
            let o = o?;
            if o.kind == opt::SACK {
                for i in 0..o.data.len() / 4 {
                    spots[n] = base + o.offset + 2 + 4 * i;
                    n += 1;
                }
            }
        }
        for &at in &spots[..n] {
            let v = f(Seq(self.get32(at)));
            self.replace32(at, v.0);
        }
        Ok(n / 2)
    }

    /// Set the timestamp option's value and echo reply, if the segment has one.
    /// Returns whether it had one.
    pub fn set_timestamp(&mut self, tsval: u32, tsecr: u32) -> Result<bool, ParseError> {
        let base = self.tcp_at(TCP_MIN_HLEN);
        let end = self.parsed.payload_offset();
        let mut spot = None;
        for o in OptionIter::new(&self.pkt[base..end]) {
            let o = o?;
            if o.kind == opt::TIMESTAMP {
                spot = Some(base + o.offset + 2);
            }
        }
        match spot {
            Some(at) => {
                self.replace32(at, tsval);
                self.replace32(at + 4, tsecr);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    /// Overwrite the timestamp option, if the segment has one, with no-operation
    /// bytes (for a receiver that did not negotiate timestamps). Returns whether it
    /// had one.
    pub fn blank_timestamp(&mut self) -> Result<bool, ParseError> {
        let base = self.tcp_at(TCP_MIN_HLEN);
        let end = self.parsed.payload_offset();
        let mut spot = None;
        for o in OptionIter::new(&self.pkt[base..end]) {
            let o = o?;
            if o.kind == opt::TIMESTAMP {
                spot = Some(base + o.offset);
            }
        }
        let Some(at) = spot else {
            return Ok(false);
        };
        // Ten bytes: kind, length and two 32-bit values. Word-wise through the
        // checksum update (16 bits at a time, bytewise alignment handled there).
        let nops = u32::from_be_bytes([opt::NOP; 4]);
        self.replace16(at, u16::from_be_bytes([opt::NOP; 2]));
        self.replace32(at + 2, nops);
        self.replace32(at + 6, nops);
        Ok(true)
    }
}


/// The fields of a segment to build with [`build_ipv4_tcp`].
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec<'a> {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: Seq,
    /// Acknowledgment number.
    pub ack: Seq,
    /// Flags.
    pub flags: TcpFlags,
    /// Raw window.
    pub window: u16,
    /// IPv4 identification.
    pub id: u16,
    /// Time to live.
    pub ttl: u8,
    /// Option bytes; padded with NOPs to a multiple of 4, at most 40 bytes.
    pub options: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// Write a complete IPv4/TCP packet with valid checksums into `out`; returns its length.
pub fn build_ipv4_tcp(out: &mut [u8], s: &SegmentSpec<'_>) -> Result<usize, ParseError> {
    if s.options.len() > 40 {
        return Err(ParseError::BadOption);
    }
    let opt_len = (s.options.len() + 3) & !3;
    let tcp_len = TCP_MIN_HLEN + opt_len + s.payload.len();
    let total = IPV4_MIN_HLEN + tcp_len;
    if total > out.len() || total > u16::MAX as usize {
        return Err(ParseError::NoRoom);
    }
    let p = &mut out[..total];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&s.id.to_be_bytes());
    p[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    p[8] = s.ttl;
    p[9] = IPPROTO_TCP;
    p[10..12].copy_from_slice(&[0, 0]);
    p[12..16].copy_from_slice(&s.src);
    p[16..20].copy_from_slice(&s.dst);
    let ipc = csum::checksum(&p[..IPV4_MIN_HLEN]);
    p[10..12].copy_from_slice(&ipc.to_be_bytes());

    let t = &mut p[IPV4_MIN_HLEN..];
    t[0..2].copy_from_slice(&s.src_port.to_be_bytes());
    t[2..4].copy_from_slice(&s.dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.0.to_be_bytes());
    t[8..12].copy_from_slice(&s.ack.0.to_be_bytes());
    t[12] = (((TCP_MIN_HLEN + opt_len) / 4) as u8) << 4;
    t[13] = s.flags.0;
    t[14..16].copy_from_slice(&s.window.to_be_bytes());
    t[16..20].copy_from_slice(&[0, 0, 0, 0]);
    t[20..20 + s.options.len()].copy_from_slice(s.options);
    for b in &mut t[20 + s.options.len()..20 + opt_len] {
        *b = opt::NOP;
    }
    t[20 + opt_len..].copy_from_slice(s.payload);
    let c = csum::l4_checksum(s.src, s.dst, IPPROTO_TCP, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: [u8; 4] = [10, 77, 0, 1];
    const DST: [u8; 4] = [10, 77, 0, 11];

    fn spec<'a>(options: &'a [u8], payload: &'a [u8]) -> SegmentSpec<'a> {
        SegmentSpec {
            src: SRC,
            dst: DST,
            src_port: 40000,
            dst_port: 80,
            seq: Seq(1000),
            ack: Seq(2000),
            flags: TcpFlags(TcpFlags::ACK | TcpFlags::PSH),
            window: 502,
            id: 7,
            ttl: 64,
            options,
            payload,
        }
    }

    fn verifies(pkt: &[u8]) -> bool {
        let p = Ipv4Tcp::parse(pkt).unwrap();
        csum::checksum(&pkt[..p.ip.header_len]) == 0
            && csum::l4_verify(p.ip.src, p.ip.dst, IPPROTO_TCP, &pkt[p.tcp_offset()..p.ip.total_len])
    }

    #[test]
    fn build_and_parse() {
        let mut buf = [0u8; 200];
        let ts = [opt::NOP, opt::NOP, opt::TIMESTAMP, 10, 0, 0, 0, 5, 0, 0, 0, 6];
        let n = build_ipv4_tcp(&mut buf, &spec(&ts, b"hello")).unwrap();
        let p = Ipv4Tcp::parse(&buf[..n]).unwrap();
        assert_eq!(p.tcp.src_port, 40000);
        assert_eq!(p.tcp.seq, Seq(1000));
        assert_eq!(p.payload_len(), 5);
        assert_eq!(p.seq_len(), 5);
        assert_eq!(&buf[p.payload_offset()..n], b"hello");
        assert!(verifies(&buf[..n]));
        let o = TcpOptions::parse(p.options(&buf[..n])).unwrap();
        assert_eq!(o.timestamp, Some((5, 6)));
    }

    #[test]
    fn rejects_malformed() {
        let mut buf = [0u8; 100];
        let n = build_ipv4_tcp(&mut buf, &spec(&[], b"x")).unwrap();
        let mut b = buf;
        b[0] = 0x65;
        assert_eq!(Ipv4Tcp::parse(&b[..n]), Err(ParseError::NotIpv4));
        let mut b = buf;
        b[0] = 0x44;
        assert_eq!(Ipv4Tcp::parse(&b[..n]), Err(ParseError::BadHeaderLength));
        let mut b = buf;
        b[2..4].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(Ipv4Tcp::parse(&b[..n]), Err(ParseError::BadTotalLength));
        let mut b = buf;
        b[6] = 0x20;
        assert_eq!(Ipv4Tcp::parse(&b[..n]), Err(ParseError::Fragment));
        let mut b = buf;
        b[9] = 17;
        assert_eq!(Ipv4Tcp::parse(&b[..n]), Err(ParseError::NotTcp));
        let mut b = buf;
        b[20 + 12] = 0xf0;
        assert_eq!(Ipv4Tcp::parse(&b[..n]), Err(ParseError::BadDataOffset));
        assert_eq!(Ipv4Tcp::parse(&buf[..10]), Err(ParseError::Truncated));
        assert_eq!(Ipv4Tcp::parse(&[]), Err(ParseError::Truncated));
    }

    #[test]
    fn headers_only_parse_checks_total_against_packet_length() {
        let mut buf = [0u8; 200];
        let n = build_ipv4_tcp(&mut buf, &spec(&[], &[7u8; 100])).unwrap();
        // 40 bytes of headers in the head, 100 payload bytes elsewhere.
        let p = Ipv4Tcp::parse_headers(&buf[..40], n).unwrap();
        assert_eq!(p.payload_len(), 100);
        assert_eq!(Ipv4Tcp::parse_headers(&buf[..40], n - 1), Err(ParseError::BadTotalLength));
        assert_eq!(Ipv4Tcp::parse_headers(&buf[..30], n), Err(ParseError::Truncated));
        let mut r = Rewriter::new_headers(&mut buf[..40], n, CsumMode::Full).unwrap();
        r.set_seq(Seq(5));
        assert!(verifies(&buf[..n]));
    }

    #[test]
    fn bad_options() {
        assert_eq!(TcpOptions::parse(&[opt::MSS, 3, 0]), Err(ParseError::BadOption));
        assert_eq!(TcpOptions::parse(&[opt::MSS]), Err(ParseError::BadOption));
        assert_eq!(TcpOptions::parse(&[99, 1]), Err(ParseError::BadOption));
        assert_eq!(TcpOptions::parse(&[99, 9, 0]), Err(ParseError::BadOption));
        assert_eq!(TcpOptions::parse(&[opt::SACK, 9, 0, 0, 0, 0, 0, 0, 0]), Err(ParseError::BadOption));
        // EOL ends parsing, whatever follows.
        assert_eq!(TcpOptions::parse(&[opt::EOL, 99, 1]).unwrap(), TcpOptions::default());
        let o = TcpOptions::parse(&[opt::MSS, 4, 5, 180, opt::NOP, opt::WSCALE, 3, 7, opt::SACK_PERM, 2])
            .unwrap();
        assert_eq!(o.mss, Some(1460));
        assert_eq!(o.wscale, Some(7));
        assert!(o.sack_permitted);
    }

    #[test]
    fn partial_mode_leaves_check_for_non_pseudo_fields() {
        let mut buf = [0u8; 100];
        let n = build_ipv4_tcp(&mut buf, &spec(&[], b"abc")).unwrap();
        let before = u16::from_be_bytes([buf[36], buf[37]]);
        let mut r = Rewriter::new(&mut buf[..n], CsumMode::Partial).unwrap();
        r.set_seq(Seq(77));
        r.set_window(9);
        assert_eq!(u16::from_be_bytes([buf[36], buf[37]]), before);
    }

    fn arb_options() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(vec![]),
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| {
                let mut v = vec![opt::NOP, opt::NOP, opt::TIMESTAMP, 10];
                v.extend_from_slice(&a.to_be_bytes());
                v.extend_from_slice(&b.to_be_bytes());
                v
            }),
            // Odd alignment: one NOP before the SACK option.
            proptest::collection::vec(any::<u32>(), 2..=6).prop_map(|edges| {
                let n = edges.len() / 2 * 2;
                let mut v = vec![opt::NOP, opt::SACK, (2 + 4 * n) as u8];
                for e in &edges[..n] {
                    v.extend_from_slice(&e.to_be_bytes());
                }
                v
            }),
        ]
    }

    proptest! {
        #[test]
        fn rewrites_keep_checksums_valid(
            opts in arb_options(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            seq: u32, ack: u32, win: u16, sport: u16, dport: u16,
            saddr: [u8; 4], daddr: [u8; 4], off: u32, tsv: u32, tse: u32,
        ) {
            let mut buf = [0u8; 200];
            let n = build_ipv4_tcp(&mut buf, &spec(&opts, &payload)).unwrap();
            let mut r = Rewriter::new(&mut buf[..n], CsumMode::Full).unwrap();
            r.set_seq(Seq(seq));
            r.set_ack(Seq(ack));
            r.set_window(win);
            r.set_src_port(sport);
            r.set_dst_port(dport);
            r.set_src_addr(saddr);
            r.set_dst_addr(daddr);
            r.map_sack(|s| s.add(off)).unwrap();
            r.set_timestamp(tsv, tse).unwrap();
            prop_assert!(verifies(&buf[..n]));
            let p = Ipv4Tcp::parse(&buf[..n]).unwrap();
            prop_assert_eq!(p.tcp.seq, Seq(seq));
            prop_assert_eq!(p.tcp.ack, Seq(ack));
            prop_assert_eq!((p.ip.src, p.ip.dst), (saddr, daddr));
            prop_assert_eq!(&buf[p.payload_offset()..n], &payload[..]);
        }

        #[test]
        fn sack_mapping_roundtrips(edges in proptest::collection::vec(any::<u32>(), 2..=8), off: u32) {
            let n = edges.len() / 2 * 2;
            let mut o = vec![opt::NOP, opt::NOP, opt::SACK, (2 + 4 * n) as u8];
            for e in &edges[..n] {
                o.extend_from_slice(&e.to_be_bytes());
            }
            let mut buf = [0u8; 200];
            let len = build_ipv4_tcp(&mut buf, &spec(&o, b"")).unwrap();
            let orig = buf;
            let mut r = Rewriter::new(&mut buf[..len], CsumMode::Full).unwrap();
            prop_assert_eq!(r.map_sack(|s| s.add(off)).unwrap(), n / 2);
            let mut r = Rewriter::new(&mut buf[..len], CsumMode::Full).unwrap();
            r.map_sack(|s| s.sub(off)).unwrap();
            prop_assert_eq!(&buf[..len], &orig[..len]);
        }

        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = Ipv4Tcp::parse(&data) {
                prop_assert!(p.payload_offset() <= p.ip.total_len);
                prop_assert!(p.ip.total_len <= data.len());
                let _ = TcpOptions::parse(p.options(&data));
            }
        }
    }
}

/// Mutation fuzzing of the parser and the rewriter: valid packets (with options and
/// payload) are corrupted byte by byte, truncated and given bogus length fields. Only
/// the stable toolchain is available here, so this runs under proptest rather than a
/// coverage-guided fuzzer; `PROPTEST_CASES` raises the count for longer runs.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Mutation {
        SetByte(prop::sample::Index, u8),
        Truncate(prop::sample::Index),
        TotalLength(u16),
        DataOffset(u8),
        Ihl(u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
            1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            1 => any::<u16>().prop_map(Mutation::TotalLength),
            1 => (0u8..16).prop_map(Mutation::DataOffset),
            1 => (0u8..16).prop_map(Mutation::Ihl),
        ]
    }

    fn options() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(vec![opt::NOP]),
                Just(vec![opt::MSS, 4, 5, 180]),
                Just(vec![opt::WSCALE, 3, 7]),
                Just(vec![opt::SACK_PERM, 2]),
                (any::<u32>(), any::<u32>()).prop_map(|(a, b)| {
                    let mut v = vec![opt::TIMESTAMP, 10];
                    v.extend_from_slice(&a.to_be_bytes());
                    v.extend_from_slice(&b.to_be_bytes());
                    v
                }),
                proptest::collection::vec(any::<u8>(), 0..6),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat().into_iter().take(40).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
        ))]
        #[test]
        fn mutated_packets_never_panic(
            opts in options(),
            payload in proptest::collection::vec(any::<u8>(), 0..80),
            muts in proptest::collection::vec(mutation(), 1..6),
            partial: bool,
            seq: u32,
            port: u16,
        ) {
            let mut buf = [0u8; 200];
            let spec = SegmentSpec {
                src: [10, 0, 0, 1], dst: [10, 0, 0, 2], src_port: 1000, dst_port: 80,
                seq: Seq(1), ack: Seq(2), flags: TcpFlags(TcpFlags::ACK), window: 100,
                id: 1, ttl: 64, options: &opts, payload: &payload,
            };
            let n = build_ipv4_tcp(&mut buf, &spec).unwrap();
            let mut pkt = buf[..n].to_vec();
            for m in &muts {
                match *m {
                    Mutation::SetByte(i, b) if !pkt.is_empty() => {
                        let i = i.index(pkt.len());
                        pkt[i] = b;
                    }
                    Mutation::Truncate(i) if !pkt.is_empty() => pkt.truncate(i.index(pkt.len())),
                    Mutation::TotalLength(v) if pkt.len() >= 4 => pkt[2..4].copy_from_slice(&v.to_be_bytes()),
                    Mutation::DataOffset(d) if pkt.len() > 32 => pkt[32] = (d << 4) | (pkt[32] & 0x0f),
                    Mutation::Ihl(h) if !pkt.is_empty() => pkt[0] = (pkt[0] & 0xf0) | h,
                    _ => {}
                }
            }
            // Headers-only view over a prefix of every length, as a kernel buffer's
            // linear part may be.
            for head in [pkt.len(), pkt.len() / 2, 20, 40] {
                let head = head.min(pkt.len());
                if let Ok(p) = Ipv4Tcp::parse_headers(&pkt[..head], pkt.len()) {
                    prop_assert!(p.payload_offset() <= head);
                    prop_assert!(p.ip.total_len <= pkt.len());
                    let _ = TcpOptions::parse(p.options(&pkt[..head]));
                }
            }
            let mode = if partial { CsumMode::Partial } else { CsumMode::Full };
            if let Ok(mut r) = Rewriter::new(&mut pkt, mode) {
                r.set_seq(Seq(seq));
                r.set_dst_port(port);
                let _ = r.map_sack(|s| s.add(7));
                let _ = r.set_timestamp(1, 2);
            }
        }
    }
}
