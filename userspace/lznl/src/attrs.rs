//! Netlink attribute payloads of a reply, decoded with bounds checks.

/// Walks a buffer of netlink attributes (`len: u16, type: u16, payload, pad to 4`).
/// Stops at the first attribute whose length does not fit.
pub struct AttrIter<'a> {
    buf: &'a [u8],
}

impl<'a> AttrIter<'a> {
    /// Iterate over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        AttrIter { buf }
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        // Mask NLA_F_NESTED and NLA_F_NET_BYTEORDER.
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & 0x3fff;
        if len < 4 || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let payload = &self.buf[4..len];
        let next = ((len + 3) & !3).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some((ty, payload))
    }
}

/// The attributes of one message, in order.
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    items: Vec<(u16, Vec<u8>)>,
}

impl Attrs {
    /// From `(type, payload)` pairs.
    pub fn from_pairs(items: Vec<(u16, Vec<u8>)>) -> Self {
        Attrs { items: items.into_iter().map(|(t, p)| (t & 0x3fff, p)).collect() }
    }

    /// The first attribute of type `id`.
    pub fn get(&self, id: u16) -> Option<&[u8]> {
        self.items.iter().find(|(t, _)| *t == id).map(|(_, p)| p.as_slice())
    }

    /// Every attribute of type `id`.
    pub fn all(&self, id: u16) -> impl Iterator<Item = &[u8]> {
        self.items.iter().filter(move |(t, _)| *t == id).map(|(_, p)| p.as_slice())
    }

    fn fixed<const N: usize>(&self, id: u16) -> Option<[u8; N]> {
        self.get(id)?.get(..N)?.try_into().ok()
    }

    /// A u8.
    pub fn u8(&self, id: u16) -> Option<u8> {
        self.fixed::<1>(id).map(|b| b[0])
    }
    /// A u16 (host order).
    pub fn u16(&self, id: u16) -> Option<u16> {
        self.fixed(id).map(u16::from_ne_bytes)
    }
    /// A u32 (host order).
    pub fn u32(&self, id: u16) -> Option<u32> {
        self.fixed(id).map(u32::from_ne_bytes)
    }
    /// A u64 (host order).
    pub fn u64(&self, id: u16) -> Option<u64> {
        self.fixed(id).map(u64::from_ne_bytes)
    }
    /// A NUL-terminated string.
    pub fn string(&self, id: u16) -> Option<String> {
        let b = self.get(id)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Some(String::from_utf8_lossy(&b[..end]).into_owned())
    }
}

/// One attribute as the kernel lays it out (header, payload, padding), for tests
/// that build replies.
#[cfg(test)]
pub(crate) fn nla(ty: u16, p: &[u8]) -> Vec<u8> {
    let mut v = ((4 + p.len()) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(p);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_padded_attributes() {
        let mut b = nla(1, &[7]);
        b.extend(nla(2, &5u64.to_ne_bytes()));
        b.extend(nla(3 | 0x8000, b"ab\0"));
        let got: Vec<_> = AttrIter::new(&b).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].0, 3);
        let a = Attrs::from_pairs(got.into_iter().map(|(t, p)| (t, p.to_vec())).collect());
        assert_eq!(a.u8(1), Some(7));
        assert_eq!(a.u64(2), Some(5));
        assert_eq!(a.string(3).as_deref(), Some("ab"));
        assert_eq!(a.u64(1), None, "a 1-byte payload is not a u64");
    }

    #[test]
    fn stops_at_bad_length() {
        let mut b = nla(1, &[1, 2, 3, 4]);
        b.extend_from_slice(&[200, 0, 2, 0, 9]);
        assert_eq!(AttrIter::new(&b).count(), 1);
        assert_eq!(AttrIter::new(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(AttrIter::new(&[]).count(), 0);
    }
}
