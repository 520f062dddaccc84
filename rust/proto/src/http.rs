// SPDX-License-Identifier: GPL-2.0
//! HTTP/1.x request heads, as the L7 splicing proxy reads them: enough to route a
//! request (method, target, Host) and to know where its body starts and how it is
//! framed.
//!
//! The proxy reads a client's head, picks a backend, writes the head there and then
//! forwards the rest of the connection without looking at it. The backend parses the
//! same bytes again, so wherever two parsers could disagree about where a message
//! ends — bare LF, obs-fold, duplicate or conflicting Content-Length, Content-Length
//! together with Transfer-Encoding — this parser refuses rather than guesses: a
//! lenient proxy in front of a strict server (or the reverse) is how requests get
//! smuggled. Every refusal carries the status code to answer with.
//!
//! No allocation: a [`RequestHead`] borrows from the buffer it was parsed from.

use core::fmt;

/// Bounds on what a client may send before the proxy has routed its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head, request line and blank line included.
    pub max_head: usize,
    /// Longest request line (method, target and version, without the CRLF).
    pub max_target: usize,
    /// Most header fields.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 16384, max_target: 8192, max_headers: 100 }
    }
}

/// Why a request head was refused. Each is final: more bytes would not help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// No blank line within [`Limits::max_head`] bytes.
    HeadTooLarge,
    /// The request line is longer than [`Limits::max_target`].
    RequestLineTooLong,
    /// More than [`Limits::max_headers`] header fields.
    TooManyHeaders,
    /// A NUL byte.
    Nul,
    /// A LF not preceded by CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// A header line starting with a space or tab (obsolete line folding).
    ObsFold,
    /// The request line is not `method SP target SP version` with single spaces.
    BadRequestLine,
    /// The method is empty or has characters outside `token`.
    BadMethod,
    /// The request-target has characters outside visible ASCII, a fragment, or a form
    /// the method does not allow.
    BadTarget,
    /// The version is not of the form `HTTP/d.d`.
    BadVersion,
    /// A well-formed version other than HTTP/1.0 and HTTP/1.1.
    UnsupportedVersion,
    /// A header name that is empty or has characters outside `token` (including
    /// whitespace before the colon).
    BadHeaderName,
    /// A header line without a colon.
    MissingColon,
    /// A control character in a header value.
    BadHeaderValue,
    /// An HTTP/1.1 request without Host.
    MissingHost,
    /// Two Host fields.
    DuplicateHost,
    /// A Host value (or the authority of an absolute-form target) with characters no
    /// host name, address or port has.
    BadHost,
    /// A Content-Length that is not a list of decimal numbers.
    BadContentLength,
    /// A Content-Length that does not fit in 64 bits.
    ContentLengthOverflow,
    /// Content-Length values that differ.
    ConflictingContentLength,
    /// Both Content-Length and Transfer-Encoding.
    ContentLengthWithTransferEncoding,
    /// A Transfer-Encoding that is empty, not a list of tokens, or applies chunked
    /// twice or with parameters.
    BadTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 request, whose framing it cannot define.
    TransferEncodingInHttp10,
    /// A Transfer-Encoding whose final coding is not chunked: the body's end is
    /// unknown.
    UnsupportedTransferEncoding,
}

impl HeadError {
    /// A short, stable name for counters and log lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            HeadError::HeadTooLarge => "head-too-large",
            HeadError::RequestLineTooLong => "request-line-too-long",
            HeadError::TooManyHeaders => "too-many-headers",
            HeadError::Nul => "nul-byte",
            HeadError::BareLf => "bare-lf",
            HeadError::BareCr => "bare-cr",
            HeadError::ObsFold => "obs-fold",
            HeadError::BadRequestLine => "bad-request-line",
            HeadError::BadMethod => "bad-method",
            HeadError::BadTarget => "bad-target",
            HeadError::BadVersion => "bad-version",
            HeadError::UnsupportedVersion => "unsupported-version",
            HeadError::BadHeaderName => "bad-header-name",
            HeadError::MissingColon => "header-without-colon",
            HeadError::BadHeaderValue => "control-char-in-header-value",
            HeadError::MissingHost => "missing-host",
            HeadError::DuplicateHost => "duplicate-host",
            HeadError::BadHost => "bad-host",
            HeadError::BadContentLength => "bad-content-length",
            HeadError::ContentLengthOverflow => "content-length-overflow",
            HeadError::ConflictingContentLength => "conflicting-content-length",
            HeadError::ContentLengthWithTransferEncoding => "content-length-with-transfer-encoding",
            HeadError::BadTransferEncoding => "bad-transfer-encoding",
            HeadError::TransferEncodingInHttp10 => "transfer-encoding-in-http-1.0",
            HeadError::UnsupportedTransferEncoding => "unsupported-transfer-encoding",
        }
    }

    /// The status code to answer with before closing the connection.
    pub const fn status(self) -> u16 {
        match self {
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::RequestLineTooLong => 414,
            HeadError::ContentLengthOverflow => 413,
            HeadError::UnsupportedTransferEncoding => 501,
            HeadError::UnsupportedVersion => 505,
            _ => 400,
        }
    }

    /// The reason phrase of [`status`](Self::status), for the response line.
    pub const fn reason(self) -> &'static str {
        match self.status() {
            413 => "Content Too Large",
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            505 => "HTTP Version Not Supported",
            _ => "Bad Request",
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request method. Methods are case-sensitive: `get` is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method<'a> {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    /// Any other token.
    Other(&'a [u8]),
}

impl<'a> Method<'a> {
    fn from_token(t: &'a [u8]) -> Self {
        match t {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            other => Method::Other(other),
        }
    }

    /// The method as it appears on the request line.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Method::Get => b"GET",
            Method::Head => b"HEAD",
            Method::Post => b"POST",
            Method::Put => b"PUT",
            Method::Delete => b"DELETE",
            Method::Connect => b"CONNECT",
            Method::Options => b"OPTIONS",
            Method::Trace => b"TRACE",
            Method::Patch => b"PATCH",
            Method::Other(t) => t,
        }
    }

    /// Whether RFC 9110 defines the method as idempotent, so a request that failed
    /// on its way to one backend may be sent to another.
    pub fn is_idempotent(&self) -> bool {
        matches!(self, Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace)
    }
}

/// The protocol versions the proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    /// The version as it appears on the request line.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }
}

/// How the body that follows a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body: the next request (if any) starts right after the head.
    None,
    /// Exactly this many bytes (never zero: that is [`BodyKind::None`]).
    Length(u64),
    /// Chunked transfer coding, up to and including the last chunk and trailers.
    Chunked,
}

/// A validated request head, borrowing from the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: Method<'a>,
    /// The request-target as sent.
    pub target: &'a [u8],
    /// The path of the target without its query: for an absolute-form target the
    /// path after the authority (`/` when it has none), `*` for the asterisk form and
    /// empty for CONNECT's authority form.
    pub path: &'a [u8],
    pub version: Version,
    /// The authority of an absolute-form target, which takes precedence, or else the
    /// Host field; port included. Compare with [`RequestHead::host_is`].
    pub host: Option<&'a [u8]>,
    /// The Content-Length, when given.
    pub content_length: Option<u64>,
    /// Transfer-Encoding ends in chunked.
    pub chunked: bool,
    /// The client closes after this request: `Connection: close`, or HTTP/1.0
    /// without `Connection: keep-alive`.
    pub connection_close: bool,
    /// An HTTP/1.1 request with `Expect: 100-continue`: the client may wait for an
    /// interim response before it sends the body.
    pub expect_continue: bool,
    /// Bytes up to and including the blank line: the body starts there.
    pub head_len: usize,
    /// The header lines, without the request line and the blank line.
    fields: &'a [u8],
}

impl<'a> RequestHead<'a> {
    /// How the body after the head is framed.
    pub fn body_kind(&self) -> BodyKind {
        if self.chunked {
            BodyKind::Chunked
        } else {
            match self.content_length {
                Some(n) if n > 0 => BodyKind::Length(n),
                _ => BodyKind::None,
            }
        }
    }

    /// Whether the request is for `name` (any port), ignoring ASCII case.
    pub fn host_is(&self, name: &[u8]) -> bool {
        self.host.is_some_and(|h| host_matches(h, name))
    }

    /// The header fields in order, as (name, value) with the value's surrounding
    /// whitespace removed.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.fields }
    }
}

/// Iterator over the header fields of a [`RequestHead`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = split_line(self.rest);
        self.rest = rest;
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => (&line[..c], &line[c + 1..]),
            None => (line, &[][..]),
        };
        Some((name, trim_ows(value)))
    }
}

/// The result of parsing what has arrived so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// No blank line yet, and nothing wrong so far: read more.
    Incomplete,
    /// A whole, valid head.
    Complete(RequestHead<'a>),
}

/// Parse the request head at the start of `buf`.
///
/// Call again with the longer buffer after each read while the result is
/// [`Parsed::Incomplete`]. Framing errors (NUL, bare CR or LF, an over-long request
/// line) are reported as soon as they arrive, so a client cannot hold a connection
/// open by trickling a head that can never be valid.
pub fn parse_request_head<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, HeadError> {
    let window = &buf[..buf.len().min(limits.max_head)];
    let end = window.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let head = match end {
        Some(n) => &buf[..n],
        None if buf.len() > limits.max_head => return Err(HeadError::HeadTooLarge),
        None => buf,
    };
    check_line_ends(head)?;
    let line_len = match find_crlf(head) {
        Some(n) => n,
        // A CR at the very end is the start of the line's CRLF.
        None => head.len() - usize::from(head.last() == Some(&b'\r')),
    };
    if line_len > limits.max_target {
        return Err(HeadError::RequestLineTooLong);
    }
    let Some(head_len) = end else {
        return Ok(Parsed::Incomplete);
    };
    // Without the final CRLF CRLF; the checks above make CRLF the only line end.
    let (request_line, fields) = split_line(&head[..head_len - 4]);
    let mut req = parse_request_line(request_line)?;
    req.head_len = head_len;
    req.fields = fields;
    parse_fields(&mut req, limits)?;
    Ok(Parsed::Complete(req))
}

/// Reject NUL, and CR and LF anywhere but together as CRLF. A CR at the end of `b`
/// may still be followed by its LF.
fn check_line_ends(b: &[u8]) -> Result<(), HeadError> {
    for (i, &c) in b.iter().enumerate() {
        match c {
            0 => return Err(HeadError::Nul),
            b'\n' if i == 0 || b[i - 1] != b'\r' => return Err(HeadError::BareLf),
            b'\r' if b.get(i + 1).is_some_and(|&n| n != b'\n') => return Err(HeadError::BareCr),
            _ => {}
        }
    }
    Ok(())
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The first line of `b` and what follows its CRLF (all of `b` when there is none).
fn split_line(b: &[u8]) -> (&[u8], &[u8]) {
    match find_crlf(b) {
        Some(n) => (&b[..n], &b[n + 2..]),
        None => (b, &[]),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().all(|&b| is_tchar(b))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The comma-separated elements of a list field, trimmed, empty ones skipped
/// (RFC 9110 5.6.1 has recipients accept them).
fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows).filter(|e| !e.is_empty())
}

/// Characters of a host name, IP literal or port, as in Host or an authority. No
/// userinfo (`@`): it has no place in a request and confuses routing. No comma
/// either, though RFC 3986 allows one in a name: in Host it is the mark of two
/// fields merged into one.
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=:[]%".contains(&b)
}

fn parse_version(v: &[u8]) -> Result<Version, HeadError> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            Err(HeadError::UnsupportedVersion)
        }
        _ => Err(HeadError::BadVersion),
    }
}

fn parse_request_line(line: &[u8]) -> Result<RequestHead<'_>, HeadError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(HeadError::BadRequestLine);
    };
    // Empty parts are doubled spaces; a space in the version is one too many.
    if method.is_empty() || target.is_empty() || version.contains(&b' ') {
        return Err(HeadError::BadRequestLine);
    }
    if !is_token(method) {
        return Err(HeadError::BadMethod);
    }
    let method = Method::from_token(method);
    // Before the target, so that an HTTP/2 preface (`PRI * HTTP/2.0`) reads as an
    // unsupported version.
    let version = parse_version(version)?;
    if !target.iter().all(|&b| b.is_ascii_graphic() && b != b'#') {
        return Err(HeadError::BadTarget);
    }
    let (path, authority) = match (method, target) {
        (Method::Connect, t) if t.iter().all(|&b| is_host_char(b)) => (&[][..], None),
        (Method::Connect, _) => return Err(HeadError::BadTarget),
        (Method::Options, b"*") => (target, None),
        (_, [b'/', ..]) => (without_query(target), None),
        _ => {
            let (authority, path) = split_absolute(target).ok_or(HeadError::BadTarget)?;
            (path, Some(authority))
        }
    };
    Ok(RequestHead {
        method,
        target,
        path,
        version,
        host: authority,
        content_length: None,
        chunked: false,
        connection_close: false,
        expect_continue: false,
        head_len: 0,
        fields: &[],
    })
}

fn without_query(t: &[u8]) -> &[u8] {
    match t.iter().position(|&b| b == b'?') {
        Some(q) => &t[..q],
        None => t,
    }
}

/// An absolute-form target `scheme://authority[/path][?query]` as (authority, path).
fn split_absolute(t: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = t.iter().position(|&b| b == b':')?;
    let scheme = &t[..colon];
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.iter().all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let rest = t[colon + 1..].strip_prefix(b"//")?;
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if !scheme_ok || authority.is_empty() || !authority.iter().all(|&b| is_host_char(b)) {
        return None;
    }
    match without_query(path) {
        [] => Some((authority, b"/")),
        p => Some((authority, p)),
    }
}

fn parse_fields(req: &mut RequestHead<'_>, limits: &Limits) -> Result<(), HeadError> {
    let mut count = 0usize;
    let mut host_field: Option<&[u8]> = None;
    let mut te_seen = false;
    let mut te_last_chunked = false;
    let mut keep_alive = false;
    let mut rest = req.fields;
    while !rest.is_empty() {
        let (line, next) = split_line(rest);
        rest = next;
        count += 1;
        if count > limits.max_headers {
            return Err(HeadError::TooManyHeaders);
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(HeadError::ObsFold);
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(HeadError::MissingColon)?;
        let name = &line[..colon];
        if !is_token(name) {
            return Err(HeadError::BadHeaderName);
        }
        let value = trim_ows(&line[colon + 1..]);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HeadError::BadHeaderValue);
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host_field.is_some() {
                return Err(HeadError::DuplicateHost);
            }
            if !value.iter().all(|&b| is_host_char(b)) {
                return Err(HeadError::BadHost);
            }
            host_field = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let mut any = false;
            for element in value.split(|&b| b == b',').map(trim_ows) {
                let n = parse_decimal(element)?;
                if req.content_length.is_some_and(|m| m != n) {
                    return Err(HeadError::ConflictingContentLength);
                }
                req.content_length = Some(n);
                any = true;
            }
            if !any {
                return Err(HeadError::BadContentLength);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let mut any = false;
            for element in list(value) {
                let (coding, params) = match element.iter().position(|&b| b == b';') {
                    Some(p) => (trim_ows(&element[..p]), true),
                    None => (element, false),
                };
                if !is_token(coding) {
                    return Err(HeadError::BadTransferEncoding);
                }
                let chunked = coding.eq_ignore_ascii_case(b"chunked");
                if chunked && (params || req.chunked) {
                    return Err(HeadError::BadTransferEncoding);
                }
                req.chunked |= chunked;
                te_last_chunked = chunked;
                any = true;
            }
            if !any {
                return Err(HeadError::BadTransferEncoding);
            }
            te_seen = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in list(value) {
                if option.eq_ignore_ascii_case(b"close") {
                    req.connection_close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            // HTTP/1.0 predates Expect; RFC 9110 10.1.1 has servers ignore it there.
            req.expect_continue |= req.version == Version::Http11 && value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if req.version == Version::Http11 && host_field.is_none() {
        return Err(HeadError::MissingHost);
    }
    if req.host.is_none() {
        req.host = host_field;
    }
    if req.version == Version::Http10 && !keep_alive {
        req.connection_close = true;
    }
    if te_seen {
        if req.version == Version::Http10 {
            return Err(HeadError::TransferEncodingInHttp10);
        }
        if req.content_length.is_some() {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        if !te_last_chunked {
            return Err(HeadError::UnsupportedTransferEncoding);
        }
    }
    Ok(())
}

fn parse_decimal(d: &[u8]) -> Result<u64, HeadError> {
    if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadContentLength);
    }
    d.iter().try_fold(0u64, |acc, &c| {
        acc.checked_mul(10).and_then(|v| v.checked_add(u64::from(c - b'0'))).ok_or(HeadError::ContentLengthOverflow)
    })
}

/// A Host value (or authority) without its port: `example.com:8080` is
/// `example.com`, `[::1]:80` is `[::1]`. Anything else is returned as it is.
pub fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(close) => &host[..=close],
            None => host,
        };
    }
    let mut colons = host.iter().enumerate().filter(|(_, &b)| b == b':');
    match (colons.next(), colons.next()) {
        (Some((c, _)), None) if host[c + 1..].iter().all(u8::is_ascii_digit) => &host[..c],
        _ => host,
    }
}

/// Whether a Host value names `name`, whatever its port, ignoring ASCII case (host
/// names are case-insensitive, RFC 3986 3.2.2).
pub fn host_matches(host: &[u8], name: &[u8]) -> bool {
    host_without_port(host).eq_ignore_ascii_case(name)
}

/// A response head, as far as a proxy that may replay the request elsewhere needs
/// it: the status and how the body is framed. Backends are trusted, so the parse is
/// lenient beyond that; it still never reads past the buffer or panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Bytes up to and including the blank line: the body starts there.
    pub head_len: usize,
    /// The Content-Length, when given.
    pub content_length: Option<u64>,
    /// A Transfer-Encoding was given: the body's bytes depend on how the server
    /// cut its chunks, not only on the content.
    pub transfer_encoding: bool,
}

/// Why a response head cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// No blank line within the limit.
    TooLarge,
    /// The status line is not `HTTP/1.x ddd ...`.
    BadStatusLine,
    /// A NUL, bare CR or bare LF.
    BadLineEnd,
    /// A Content-Length that is not a number, or two that differ.
    BadContentLength,
}

impl ResponseError {
    /// A short, stable name for log lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResponseError::TooLarge => "response-head-too-large",
            ResponseError::BadStatusLine => "bad-status-line",
            ResponseError::BadLineEnd => "bad-line-end",
            ResponseError::BadContentLength => "bad-content-length",
        }
    }
}

/// Parse the response head at the start of `buf`: `Ok(None)` while no blank line has
/// arrived within `max_head` bytes.
pub fn parse_response_head(buf: &[u8], max_head: usize) -> Result<Option<ResponseHead>, ResponseError> {
    let window = &buf[..buf.len().min(max_head)];
    let Some(head_len) = window.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return if buf.len() >= max_head { Err(ResponseError::TooLarge) } else { Ok(None) };
    };
    let head = &buf[..head_len];
    check_line_ends(head).map_err(|_| ResponseError::BadLineEnd)?;
    let (status_line, mut rest) = split_line(&head[..head_len - 4]);
    let status = match status_line {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1', b' ', a, b, c, tail @ ..]
            if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() && (tail.is_empty() || tail[0] == b' ') =>
        {
            (*a - b'0') as u16 * 100 + (*b - b'0') as u16 * 10 + (*c - b'0') as u16
        }
        _ => return Err(ResponseError::BadStatusLine),
    };
    let mut r = ResponseHead { status, head_len, content_length: None, transfer_encoding: false };
    while !rest.is_empty() {
        let (line, next) = split_line(rest);
        rest = next;
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            for element in value.split(|&b| b == b',').map(trim_ows) {
                let n = parse_decimal(element).map_err(|_| ResponseError::BadContentLength)?;
                if r.content_length.is_some_and(|m| m != n) {
                    return Err(ResponseError::BadContentLength);
                }
                r.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            r.transfer_encoding = true;
        }
    }
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Parsed<'_>, HeadError> {
        parse_request_head(text, &Limits::default())
    }

    fn head(text: &[u8]) -> RequestHead<'_> {
        match parse(text) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{:?}: {other:?}", core::str::from_utf8(text)),
        }
    }

    fn err(text: &[u8]) -> HeadError {
        match parse(text) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", core::str::from_utf8(text)),
        }
    }

    /// A valid HTTP/1.1 head with the given extra header lines.
    fn with(fields: &str) -> std::vec::Vec<u8> {
        std::format!("POST /up HTTP/1.1\r\nHost: a.example\r\n{fields}\r\n").into_bytes()
    }

    #[test]
    fn parses_a_simple_get() {
        let text = b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: Static.Example:8080\r\nAccept: */*\r\n\r\nBODY";
        let h = head(text);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.target, b"/static/app.js?v=3");
        assert_eq!(h.path, b"/static/app.js");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.host, Some(&b"Static.Example:8080"[..]));
        assert!(h.host_is(b"static.example") && !h.host_is(b"static"));
        assert_eq!((h.content_length, h.chunked, h.connection_close, h.expect_continue), (None, false, false, false));
        assert_eq!(h.head_len, text.len() - 4);
        assert_eq!(h.body_kind(), BodyKind::None);
        let fields: std::vec::Vec<_> = h.headers().collect();
        assert_eq!(fields, [(&b"Host"[..], &b"Static.Example:8080"[..]), (&b"Accept"[..], &b"*/*"[..])]);
        assert!(h.method.is_idempotent() && !Method::Post.is_idempotent());
        assert_eq!(Method::Other(b"PURGE").as_bytes(), b"PURGE");
        assert_eq!(Method::from_token(b"get"), Method::Other(b"get"));
    }

    #[test]
    fn incomplete_until_the_blank_line() {
        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for n in 0..text.len() {
            assert_eq!(parse(&text[..n]), Ok(Parsed::Incomplete), "prefix of {n}");
        }
        assert_eq!(head(text).head_len, text.len());
    }

    #[test]
    fn body_framing() {
        let text = with("Content-Length: 42\r\n");
        let h = head(&text);
        assert_eq!((h.content_length, h.body_kind()), (Some(42), BodyKind::Length(42)));
        assert_eq!(head(&with("Content-Length: 0\r\n")).body_kind(), BodyKind::None);
        // Repeated identical values, in one field or several, are one length.
        assert_eq!(head(&with("Content-Length: 7, 7\r\nContent-Length: 7\r\n")).content_length, Some(7));
        assert_eq!(head(&with("Content-Length: 18446744073709551615\r\n")).content_length, Some(u64::MAX));
        let text = with("Transfer-Encoding: gzip, Chunked\r\n");
        let h = head(&text);
        assert!(h.chunked);
        assert_eq!(h.body_kind(), BodyKind::Chunked);
        assert!(head(&with("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n")).chunked);
        assert!(head(&with("Transfer-Encoding: chunked ,\r\n")).chunked);
    }

    #[test]
    fn connection_and_expect() {
        assert!(head(&with("Connection: keep-alive, Close\r\n")).connection_close);
        assert!(!head(&with("Connection: upgrade\r\n")).connection_close);
        assert!(head(b"GET / HTTP/1.0\r\n\r\n").connection_close);
        let h = head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(!h.connection_close);
        assert_eq!((h.version, h.host), (Version::Http10, None));
        assert!(head(&with("Expect: 100-Continue\r\n")).expect_continue);
        assert!(!head(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn target_forms() {
        let h = head(b"GET http://Up.Example:81/a/b?q HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!((h.path, h.host), (&b"/a/b"[..], Some(&b"Up.Example:81"[..])));
        assert!(h.host_is(b"up.example"));
        let h = head(b"GET https://up.example?q HTTP/1.1\r\nHost: up.example\r\n\r\n");
        assert_eq!(h.path, b"/");
        let h = head(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.path, b"*");
        let h = head(b"CONNECT up.example:443 HTTP/1.1\r\nHost: up.example:443\r\n\r\n");
        assert_eq!((h.method, h.path), (Method::Connect, &b""[..]));
        assert_eq!(err(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET http://u@evil/ HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET 1ttp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"GET index.html HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
        assert_eq!(err(b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
    }

    #[test]
    fn request_line_shape() {
        for bad in [
            &b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET /\r\nHost: a\r\n\r\n",
            b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(err(bad), HeadError::BadRequestLine, "{:?}", core::str::from_utf8(bad));
        }
        assert_eq!(err(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadMethod);
        assert_eq!(err(b"GE\tT / HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadMethod);
        assert_eq!(err(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), HeadError::UnsupportedVersion);
        assert_eq!(err(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), HeadError::UnsupportedVersion);
        assert_eq!(err(b"GET / HTTP/1\r\nHost: a\r\n\r\n"), HeadError::BadVersion);
        assert_eq!(err(b"GET / http/1.1\r\nHost: a\r\n\r\n"), HeadError::BadVersion);
    }

    #[test]
    fn line_ends() {
        assert_eq!(err(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), HeadError::BareLf);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a\n\r\n"), HeadError::BareLf);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a\r\n\n"), HeadError::BareLf);
        assert_eq!(err(b"GET / HTTP/1.1\rHost: a\r\n\r\n"), HeadError::BareCr);
        assert_eq!(err(b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n"), HeadError::BareCr);
        assert_eq!(err(b"GET / HTTP/1.1\r\nX: a\0b\r\nHost: a\r\n\r\n"), HeadError::Nul);
        // Reported before the head is complete.
        assert_eq!(err(b"GET / HT\0"), HeadError::Nul);
        assert_eq!(err(b"GET / HTTP/1.1\n"), HeadError::BareLf);
        assert_eq!(err(b"GET / HTTP/1.1\rX"), HeadError::BareCr);
        // After the head, bytes are the body's business.
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\0\n\r").head_len, 27);
    }

    #[test]
    fn header_lines() {
        assert_eq!(err(&with("X-A: 1\r\n  continued\r\n")), HeadError::ObsFold);
        assert_eq!(err(b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n"), HeadError::ObsFold);
        assert_eq!(err(&with("Content-Length : 5\r\n")), HeadError::BadHeaderName);
        assert_eq!(err(&with(": 5\r\n")), HeadError::BadHeaderName);
        assert_eq!(err(&with("X(y): 5\r\n")), HeadError::BadHeaderName);
        assert_eq!(err(&with("NoColon\r\n")), HeadError::MissingColon);
        assert_eq!(err(&with("X-A: a\x01b\r\n")), HeadError::BadHeaderValue);
        assert_eq!(err(&with("X-A: a\x7fb\r\n")), HeadError::BadHeaderValue);
        // Tabs and obs-text are allowed in values.
        let h = head(b"POST /up HTTP/1.1\r\nHost: a.example\r\nX-A: \ta\tb\xff \r\n\r\n");
        assert_eq!(h.headers().nth(1), Some((&b"X-A"[..], &b"a\tb\xff"[..])));
    }

    #[test]
    fn host_rules() {
        assert_eq!(err(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"), HeadError::MissingHost);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n"), HeadError::DuplicateHost);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), HeadError::DuplicateHost);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), HeadError::BadHost);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), HeadError::BadHost);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), HeadError::BadHost);
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"), HeadError::BadHost);
        // An absolute-form target still needs Host in HTTP/1.1.
        assert_eq!(err(b"GET http://a/ HTTP/1.1\r\n\r\n"), HeadError::MissingHost);
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").host, Some(&b""[..]));
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").host, Some(&b"[::1]:80"[..]));
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(err(&with("Content-Length: 5\r\nContent-Length: 6\r\n")), HeadError::ConflictingContentLength);
        assert_eq!(err(&with("Content-Length: 5, 6\r\n")), HeadError::ConflictingContentLength);
        assert_eq!(err(&with("Content-Length: +5\r\n")), HeadError::BadContentLength);
        assert_eq!(err(&with("Content-Length: 5a\r\n")), HeadError::BadContentLength);
        assert_eq!(err(&with("Content-Length: 0x10\r\n")), HeadError::BadContentLength);
        assert_eq!(err(&with("Content-Length:\r\n")), HeadError::BadContentLength);
        assert_eq!(err(&with("Content-Length: 5,\r\n")), HeadError::BadContentLength);
        assert_eq!(err(&with("Content-Length: 5 5\r\n")), HeadError::BadContentLength);
        assert_eq!(err(&with("Content-Length: 18446744073709551616\r\n")), HeadError::ContentLengthOverflow);
        assert_eq!(err(&with("Content-Length: 99999999999999999999999\r\n")), HeadError::ContentLengthOverflow);
    }

    #[test]
    fn transfer_encoding_rules() {
        let both = HeadError::ContentLengthWithTransferEncoding;
        assert_eq!(err(&with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")), both);
        assert_eq!(err(&with("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n")), both);
        let unsupported = HeadError::UnsupportedTransferEncoding;
        assert_eq!(err(&with("Transfer-Encoding: gzip\r\n")), unsupported);
        assert_eq!(err(&with("Transfer-Encoding: chunked, gzip\r\n")), unsupported);
        assert_eq!(err(&with("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n")), unsupported);
        assert_eq!(err(&with("Transfer-Encoding: xchunked\r\n")), unsupported);
        let bad = HeadError::BadTransferEncoding;
        assert_eq!(err(&with("Transfer-Encoding:\r\n")), bad);
        assert_eq!(err(&with("Transfer-Encoding: ,\r\n")), bad);
        assert_eq!(err(&with("Transfer-Encoding: chunked, chunked\r\n")), bad);
        assert_eq!(err(&with("Transfer-Encoding: chunked;x=1\r\n")), bad);
        assert_eq!(err(&with("Transfer-Encoding: \"chunked\"\r\n")), bad);
        let te10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(err(te10), HeadError::TransferEncodingInHttp10);
    }

    #[test]
    fn limits() {
        let tight = Limits { max_head: 64, max_target: 20, max_headers: 2 };
        let p = |t: &'static [u8]| parse_request_head(t, &tight);
        assert!(matches!(p(b"GET /012345 HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(Parsed::Complete(_))));
        assert_eq!(p(b"GET /0123456 HTTP/1.1\r\nHost: a\r\n\r\n"), Err(HeadError::RequestLineTooLong));
        // Known as soon as the line is too long, and a trailing CR does not count.
        assert_eq!(p(b"GET /0123456 HTTP/1.1"), Err(HeadError::RequestLineTooLong));
        assert_eq!(p(b"GET /012345 HTTP/1.1\r"), Ok(Parsed::Incomplete));
        assert_eq!(p(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n"), Err(HeadError::TooManyHeaders));
        assert!(matches!(p(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n"), Ok(Parsed::Complete(_))));
        // Exactly max_head is fine; one byte more is not, complete or not.
        let exact = b"GET / HTTP/1.1\r\nHost: a\r\nX: 01234567890123456789012345678901\r\n\r\n";
        assert_eq!(exact.len(), 64);
        assert!(matches!(p(exact), Ok(Parsed::Complete(_))));
        let over = b"GET / HTTP/1.1\r\nHost: a\r\nX: 012345678901234567890123456789012\r\n\r\n";
        assert_eq!(p(over), Err(HeadError::HeadTooLarge));
        assert_eq!(p(&over[..64]), Ok(Parsed::Incomplete));
        assert_eq!(p(&over[..65]), Err(HeadError::HeadTooLarge));
        assert_eq!(Limits::default(), Limits { max_head: 16384, max_target: 8192, max_headers: 100 });
    }

    #[test]
    fn status_codes_and_names() {
        use HeadError::*;
        let all = [
            HeadTooLarge,
            RequestLineTooLong,
            TooManyHeaders,
            Nul,
            BareLf,
            BareCr,
            ObsFold,
            BadRequestLine,
            BadMethod,
            BadTarget,
            BadVersion,
            UnsupportedVersion,
            BadHeaderName,
            MissingColon,
            BadHeaderValue,
            MissingHost,
            DuplicateHost,
            BadHost,
            BadContentLength,
            ContentLengthOverflow,
            ConflictingContentLength,
            ContentLengthWithTransferEncoding,
            BadTransferEncoding,
            TransferEncodingInHttp10,
            UnsupportedTransferEncoding,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a.as_str() != b.as_str()), "{a:?}");
            assert_eq!(std::format!("{a}"), a.as_str());
            assert!([400, 413, 414, 431, 501, 505].contains(&a.status()));
        }
        assert_eq!((HeadTooLarge.status(), HeadTooLarge.reason()), (431, "Request Header Fields Too Large"));
        assert_eq!((TooManyHeaders.status(), RequestLineTooLong.status()), (431, 414));
        assert_eq!((UnsupportedVersion.status(), UnsupportedTransferEncoding.status()), (505, 501));
        assert_eq!((ContentLengthOverflow.status(), MissingHost.status()), (413, 400));
        assert_eq!(ContentLengthWithTransferEncoding.reason(), "Bad Request");
    }

    #[test]
    fn response_heads() {
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nX-Backend: b1\r\nContent-Length: 12\r\n\r\nbody", 1024).unwrap().unwrap();
        assert_eq!(r, ResponseHead { status: 200, head_len: 54, content_length: Some(12), transfer_encoding: false });
        let r = parse_response_head(b"HTTP/1.0 404\r\nTransfer-Encoding: chunked\r\n\r\n", 1024).unwrap().unwrap();
        assert_eq!((r.status, r.content_length, r.transfer_encoding), (404, None, true));
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Len", 1024), Ok(None));
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\nX: y", 16), Err(ResponseError::TooLarge));
        for bad in [&b"HTTP/2 200 OK\r\n\r\n"[..], b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 200OK\r\n\r\n", b"\r\n\r\n"] {
            assert_eq!(parse_response_head(bad, 1024), Err(ResponseError::BadStatusLine), "{bad:?}");
        }
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\nA: b\r\n\r\n", 1024), Err(ResponseError::BadLineEnd));
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_response_head(two, 1024), Err(ResponseError::BadContentLength));
        let same = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n";
        assert_eq!(parse_response_head(same, 1024).unwrap().unwrap().content_length, Some(2));
    }

    #[test]
    fn hosts_without_ports() {
        assert_eq!(host_without_port(b"example.com:8080"), b"example.com");
        assert_eq!(host_without_port(b"example.com:"), b"example.com");
        assert_eq!(host_without_port(b"example.com"), b"example.com");
        assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
        assert_eq!(host_without_port(b"[::1]"), b"[::1]");
        assert_eq!(host_without_port(b"[::1"), b"[::1");
        assert_eq!(host_without_port(b"::1"), b"::1");
        assert_eq!(host_without_port(b"a:b"), b"a:b");
        assert_eq!(host_without_port(b""), b"");
        assert!(host_matches(b"WWW.Example.COM:443", b"www.example.com"));
        assert!(!host_matches(b"www.example.com.evil", b"www.example.com"));
    }
}

/// Mutation fuzzing of the head parser: valid heads (with and without bodies) get
/// bytes overwritten, CR, LF, NUL, SP and HT inserted, and are truncated. Only the
/// stable toolchain is available here, so this runs under proptest rather than a
/// coverage-guided fuzzer; `PROPTEST_CASES` raises the count for longer runs.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[derive(Debug, Clone)]
    enum Mutation {
        SetByte(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
        Truncate(prop::sample::Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let special = prop::sample::select(&[b'\r', b'\n', 0, b' ', b'\t', b':', b','][..]);
        prop_oneof![
            3 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
            3 => (any::<prop::sample::Index>(), special).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        ]
    }

    fn field() -> impl Strategy<Value = std::string::String> {
        prop_oneof![
            (0u64..100_000).prop_map(|n| std::format!("Content-Length: {n}")),
            Just("Transfer-Encoding: chunked".into()),
            Just("Transfer-Encoding: gzip, chunked".into()),
            Just("Connection: close".into()),
            Just("Connection: keep-alive".into()),
            Just("Expect: 100-continue".into()),
            "[A-Za-z-]{1,12}: [ -~]{0,20}".prop_map(|s| s),
        ]
    }

    /// A valid head (by construction, unless the fields chosen conflict) and a body.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(&["GET", "HEAD", "POST", "PUT", "DELETE", "PURGE"][..]),
            "(/[a-z0-9._-]{0,8}){1,3}(\\?[a-z=&]{0,8})?",
            prop::sample::select(&["HTTP/1.1", "HTTP/1.0"][..]),
            "[a-z]{1,8}(\\.[a-z]{2,5})?(:[0-9]{1,5})?",
            proptest::collection::vec(field(), 0..6),
            proptest::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(method, path, version, host, fields, body)| {
                let mut s = std::format!("{method} {path} {version}\r\nHost: {host}\r\n");
                for f in fields {
                    s.push_str(&f);
                    s.push_str("\r\n");
                }
                s.push_str("\r\n");
                let mut v = s.into_bytes();
                v.extend_from_slice(&body);
                v
            })
    }

    fn apply(buf: &mut Vec<u8>, muts: &[Mutation]) {
        for m in muts {
            match *m {
                Mutation::SetByte(i, b) if !buf.is_empty() => {
                    let i = i.index(buf.len());
                    buf[i] = b;
                }
                Mutation::Insert(i, b) => buf.insert(i.index(buf.len() + 1), b),
                Mutation::Truncate(i) if !buf.is_empty() => buf.truncate(i.index(buf.len())),
                _ => {}
            }
        }
    }

    fn blank_line(b: &[u8]) -> Option<usize> {
        b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
        ))]
        #[test]
        fn mutated_heads_never_panic(
            req in request(),
            muts in proptest::collection::vec(mutation(), 0..6),
            max_head in prop::sample::select(&[16384usize, 64, 40][..]),
            max_headers in 0usize..8,
        ) {
            let mut buf = req;
            apply(&mut buf, &muts);
            let limits = Limits { max_head, max_target: 8192, max_headers };
            match parse_request_head(&buf, &limits) {
                Ok(Parsed::Incomplete) => {
                    prop_assert!(blank_line(&buf).is_none());
                    prop_assert!(buf.len() <= max_head);
                }
                Ok(Parsed::Complete(h)) => {
                    prop_assert!(h.head_len <= buf.len() && h.head_len <= max_head);
                    prop_assert_eq!(Some(h.head_len), blank_line(&buf));
                    let head = buf[..h.head_len].as_ptr_range();
                    for part in [h.target, h.path, h.method.as_bytes(), h.host.unwrap_or(b"")] {
                        let p = part.as_ptr_range();
                        // Borrowed from the head, or a constant ("/", a method name).
                        prop_assert!(part.is_empty() || part == b"/" || h.method.as_bytes() == part
                            || (head.start <= p.start && p.end <= head.end));
                    }
                    prop_assert!(!(h.chunked && h.content_length.is_some()));
                    prop_assert!(h.headers().count() <= max_headers);
                    let _ = h.body_kind();
                }
                Err(e) => {
                    prop_assert!(!e.as_str().is_empty());
                    prop_assert!([400, 413, 414, 431, 501, 505].contains(&e.status()));
                }
            }
        }

        #[test]
        fn mutated_response_heads_never_panic(
            status in 100u16..600,
            len in proptest::option::of(any::<u32>()),
            muts in proptest::collection::vec(mutation(), 0..6),
            max_head in prop::sample::select(&[16384usize, 64, 20][..]),
        ) {
            let mut buf = std::format!("HTTP/1.1 {status} Reason\r\nX-Backend: b1\r\n").into_bytes();
            if let Some(n) = len {
                buf.extend_from_slice(std::format!("Content-Length: {n}\r\n").as_bytes());
            }
            buf.extend_from_slice(b"\r\nbody");
            apply(&mut buf, &muts);
            match parse_response_head(&buf, max_head) {
                Ok(None) => prop_assert!(blank_line(&buf[..buf.len().min(max_head)]).is_none() && buf.len() < max_head),
                Ok(Some(h)) => {
                    prop_assert_eq!(Some(h.head_len), blank_line(&buf));
                    prop_assert!(h.head_len <= max_head && (100..1000).contains(&h.status));
                    if muts.is_empty() {
                        prop_assert_eq!((h.status, h.content_length), (status, len.map(u64::from)));
                    }
                }
                Err(e) => prop_assert!(!e.as_str().is_empty()),
            }
        }

        #[test]
        fn valid_heads_arrive_in_pieces(req in request()) {
            let limits = Limits::default();
            let end = blank_line(&req).unwrap();
            let whole = parse_request_head(&req, &limits);
            for n in 0..end {
                prop_assert_eq!(parse_request_head(&req[..n], &limits), Ok(Parsed::Incomplete));
            }
            // The body never changes the head's reading.
            prop_assert_eq!(parse_request_head(&req[..end], &limits), whole);
            if let Ok(Parsed::Complete(h)) = whole {
                prop_assert_eq!(h.head_len, end);
            }
        }
    }
}
