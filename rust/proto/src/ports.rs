// SPDX-License-Identifier: GPL-2.0
//! Sets of TCP ports, as written in sysctls and configuration: `"80 443, 8000-8003"`.
//!
//! Fixed capacity and no allocation, so the kernel can hold one in a module and the
//! sysctl handler can parse into a scratch copy before it commits.

use core::fmt;

/// Most ports a set can hold.
pub const MAX_PORTS: usize = 64;

/// A sorted set of distinct, non-zero ports.
///
/// # Invariants
///
/// `ports[..len]` is strictly increasing and contains no zero; `len <= MAX_PORTS`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PortSet {
    ports: [u16; MAX_PORTS],
    len: usize,
}

/// Why a port list was rejected. `at` is the byte offset of the offending token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortError {
    /// Not a number, or a number that does not fit in 16 bits.
    NotAPort { at: usize },
    /// Port 0 is not a service port.
    Zero { at: usize },
    /// A range whose end is below its start.
    BackwardsRange { at: usize },
    /// More than [`MAX_PORTS`] ports.
    TooMany { at: usize },
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PortError::NotAPort { at } => write!(f, "not a port number (1-65535) at byte {at}"),
            PortError::Zero { at } => write!(f, "port 0 is not allowed (byte {at})"),
            PortError::BackwardsRange { at } => write!(f, "range end below its start at byte {at}"),
            PortError::TooMany { at } => write!(f, "more than {MAX_PORTS} ports (byte {at})"),
        }
    }
}

/// Why a single insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Port 0.
    Zero,
    /// The set is full.
    Full,
}

impl Default for PortSet {
    fn default() -> Self {
        Self::new()
    }
}

impl PortSet {
    /// The empty set.
    pub const fn new() -> Self {
        PortSet { ports: [0; MAX_PORTS], len: 0 }
    }

    /// The ports, ascending.
    pub fn as_slice(&self) -> &[u16] {
        &self.ports[..self.len]
    }

    /// Number of ports.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index of `port`, if present (binary search).
    pub fn position(&self, port: u16) -> Option<usize> {
        self.as_slice().binary_search(&port).ok()
    }

    /// True when `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.position(port).is_some()
    }

    /// Insert a port; returns `Ok(false)` when it was already present.
    pub fn insert(&mut self, port: u16) -> Result<bool, InsertError> {
        if port == 0 {
            return Err(InsertError::Zero);
        }
        match self.as_slice().binary_search(&port) {
            Ok(_) => Ok(false),
            Err(_) if self.len == MAX_PORTS => Err(InsertError::Full),
            Err(i) => {
                self.ports.copy_within(i..self.len, i + 1);
                self.ports[i] = port;
                self.len += 1;
                Ok(true)
            }
        }
    }

    /// Remove a port; returns whether it was present.
    pub fn remove(&mut self, port: u16) -> bool {
        match self.position(port) {
            Some(i) => {
                self.ports.copy_within(i + 1..self.len, i);
                self.len -= 1;
                self.ports[self.len] = 0;
                true
            }
            None => false,
        }
    }

    /// Parse a list of ports and ranges separated by spaces, tabs, newlines or commas.
    /// The empty string is the empty set.
    pub fn parse(text: &[u8]) -> Result<Self, PortError> {
        let mut set = PortSet::new();
        for (start, tok) in tokens(text) {
            let (lo, hi) = match tok.iter().position(|&b| b == b'-') {
                Some(d) => (
                    parse_port(&tok[..d], start)?,
                    parse_port(&tok[d + 1..], start + d + 1)?,
                ),
                None => {
                    let p = parse_port(tok, start)?;
                    (p, p)
                }
            };
            if hi < lo {
                return Err(PortError::BackwardsRange { at: start });
            }
            for p in lo..=hi {
                set.insert(p).map_err(|_| PortError::TooMany { at: start })?;
            }
        }
        Ok(set)
    }
}

fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b',')
}

/// The tokens of a list separated by spaces, tabs, newlines or commas, each with its
/// byte offset (for error messages).
fn tokens(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut i = 0;
    core::iter::from_fn(move || {
        while i < text.len() && is_sep(text[i]) {
            i += 1;
        }
        if i == text.len() {
            return None;
        }
        let start = i;
        while i < text.len() && !is_sep(text[i]) {
            i += 1;
        }
        Some((start, &text[start..i]))
    })
}

fn parse_port(tok: &[u8], at: usize) -> Result<u16, PortError> {
    if tok.is_empty() || tok.len() > 5 || !tok.iter().all(u8::is_ascii_digit) {
        return Err(PortError::NotAPort { at });
    }
    let v = tok.iter().fold(0u32, |acc, &d| acc * 10 + (d - b'0') as u32);
    match v {
        0 => Err(PortError::Zero { at }),
        1..=65535 => Ok(v as u16),
        _ => Err(PortError::NotAPort { at }),
    }
}

/// Writes the set in the form [`PortSet::parse`] reads: ascending, space-separated.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_sysctl_reference_states_these_limits() {
        let doc = include_str!("../../../docs/sysctl.md");
        assert!(doc.contains(&std::format!("at most {MAX_PORTS} ports")), "docs/sysctl.md: ports limit");
        assert!(doc.contains(&std::format!("at most {MAX_REDIRECTS}")), "docs/sysctl.md: redirect limit");
    }

    #[test]
    fn parses_lists_and_ranges() {
        let s = PortSet::parse(b" 443,80\n8000-8002 80").unwrap();
        assert_eq!(s.as_slice(), &[80, 443, 8000, 8001, 8002]);
        assert_eq!(s.to_string(), "80 443 8000 8001 8002");
        assert!(PortSet::parse(b"").unwrap().is_empty());
        assert!(PortSet::parse(b" , \n").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_input_with_position() {
        assert_eq!(PortSet::parse(b"80 http"), Err(PortError::NotAPort { at: 3 }));
        assert_eq!(PortSet::parse(b"0"), Err(PortError::Zero { at: 0 }));
        assert_eq!(PortSet::parse(b"65536"), Err(PortError::NotAPort { at: 0 }));
        assert_eq!(PortSet::parse(b"99999999999"), Err(PortError::NotAPort { at: 0 }));
        assert_eq!(PortSet::parse(b"9-3"), Err(PortError::BackwardsRange { at: 0 }));
        assert_eq!(PortSet::parse(b"1-"), Err(PortError::NotAPort { at: 2 }));
        assert_eq!(PortSet::parse(b"-5"), Err(PortError::NotAPort { at: 0 }));
        assert_eq!(PortSet::parse(b"1-65535"), Err(PortError::TooMany { at: 0 }));
        assert_eq!(PortSet::parse(b"+80"), Err(PortError::NotAPort { at: 0 }));
    }

    #[test]
    fn insert_remove() {
        let mut s = PortSet::new();
        assert_eq!(s.insert(0), Err(InsertError::Zero));
        assert_eq!(s.insert(5), Ok(true));
        assert_eq!(s.insert(5), Ok(false));
        for p in 100..163 {
            assert_eq!(s.insert(p), Ok(true));
        }
        assert_eq!(s.len(), MAX_PORTS);
        assert_eq!(s.insert(7), Err(InsertError::Full));
        assert!(s.remove(5));
        assert!(!s.remove(5));
        assert_eq!(s.insert(7), Ok(true));
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(ports in proptest::collection::btree_set(1u16.., 0..MAX_PORTS)) {
            let mut s = PortSet::new();
            for &p in &ports {
                s.insert(p).unwrap();
            }
            let text = s.to_string();
            prop_assert_eq!(PortSet::parse(text.as_bytes()).unwrap(), s);
            prop_assert_eq!(s.as_slice(), &ports.iter().copied().collect::<Vec<_>>()[..]);
        }

        #[test]
        fn parse_never_panics(text in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(s) = PortSet::parse(&text) {
                prop_assert!(s.as_slice().windows(2).all(|w| w[0] < w[1]));
                prop_assert!(!s.contains(0));
            }
        }
    }
}

/// Most port redirections a map can hold.
pub const MAX_REDIRECTS: usize = 8;

/// Port redirections, as written in the `redirect` sysctl: `"9999:8080 8443:443"`
/// sends connections for the first port of each pair to the second.
///
/// # Invariants
///
/// `pairs[..len]` have non-zero ports, distinct `from` ports, distinct `to` ports, and
/// no pair maps a port to itself; `len <= MAX_REDIRECTS`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RedirectMap {
    pairs: [(u16, u16); MAX_REDIRECTS],
    len: usize,
}

/// Why a redirect list was rejected. `at` is the byte offset of the offending token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectError {
    /// Not `FROM:TO` with two ports in 1..=65535.
    Malformed { at: usize },
    /// A port redirected to itself.
    SelfLoop { at: usize },
    /// A `from` port given twice, or a `to` port shared by two pairs (replies from it
    /// could not be mapped back statelessly).
    Duplicate { at: usize },
    /// More than [`MAX_REDIRECTS`] pairs.
    TooMany { at: usize },
}

impl fmt::Display for RedirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RedirectError::Malformed { at } => write!(f, "expected FROM:TO with ports 1-65535 at byte {at}"),
            RedirectError::SelfLoop { at } => write!(f, "a port redirected to itself at byte {at}"),
            RedirectError::Duplicate { at } => write!(f, "port used twice as source or as target at byte {at}"),
            RedirectError::TooMany { at } => write!(f, "more than {MAX_REDIRECTS} redirections (byte {at})"),
        }
    }
}

impl RedirectMap {
    /// The pairs, in the order given.
    pub fn pairs(&self) -> &[(u16, u16)] {
        &self.pairs[..self.len]
    }

    /// Parse pairs separated by spaces, tabs, newlines or commas. Empty is no redirection.
    pub fn parse(text: &[u8]) -> Result<Self, RedirectError> {
        let mut map = RedirectMap::default();
        for (start, tok) in tokens(text) {
            let colon = tok.iter().position(|&b| b == b':').ok_or(RedirectError::Malformed { at: start })?;
            let bad = |_| RedirectError::Malformed { at: start };
            let from = parse_port(&tok[..colon], start).map_err(bad)?;
            let to = parse_port(&tok[colon + 1..], start).map_err(bad)?;
            if from == to {
                return Err(RedirectError::SelfLoop { at: start });
            }
            if map.pairs().iter().any(|&(f, t)| f == from || t == to) {
                return Err(RedirectError::Duplicate { at: start });
            }
            if map.len == MAX_REDIRECTS {
                return Err(RedirectError::TooMany { at: start });
            }
            map.pairs[map.len] = (from, to);
            map.len += 1;
        }
        Ok(map)
    }
}

/// Writes the map in the form [`RedirectMap::parse`] reads.
impl fmt::Display for RedirectMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (from, to)) in self.pairs().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{from}:{to}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod redirect_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_rejects() {
        let m = RedirectMap::parse(b"9999:8080, 8443:443").unwrap();
        assert_eq!(m.pairs(), &[(9999, 8080), (8443, 443)]);
        assert_eq!(m.to_string(), "9999:8080 8443:443");
        assert!(RedirectMap::parse(b"").unwrap().pairs().is_empty());
        assert_eq!(RedirectMap::parse(b"80"), Err(RedirectError::Malformed { at: 0 }));
        assert_eq!(RedirectMap::parse(b"1:2 80:x"), Err(RedirectError::Malformed { at: 4 }));
        assert_eq!(RedirectMap::parse(b"0:80"), Err(RedirectError::Malformed { at: 0 }));
        assert_eq!(RedirectMap::parse(b"80:80"), Err(RedirectError::SelfLoop { at: 0 }));
        assert_eq!(RedirectMap::parse(b"1:2 1:3"), Err(RedirectError::Duplicate { at: 4 }));
        assert_eq!(RedirectMap::parse(b"1:2 3:2"), Err(RedirectError::Duplicate { at: 4 }));
        assert_eq!(RedirectMap::parse(b"1:2:3"), Err(RedirectError::Malformed { at: 0 }));
        let nine = b"1:2 3:4 5:6 7:8 9:10 11:12 13:14 15:16 17:18";
        assert_eq!(RedirectMap::parse(nine), Err(RedirectError::TooMany { at: 39 }));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(text in proptest::collection::vec(any::<u8>(), 0..60)) {
            if let Ok(m) = RedirectMap::parse(&text) {
                prop_assert_eq!(RedirectMap::parse(m.to_string().as_bytes()), Ok(m));
                prop_assert!(m.pairs().iter().all(|&(f, t)| f != 0 && t != 0 && f != t));
            }
        }
    }
}
