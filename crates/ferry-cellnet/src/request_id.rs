//! Request ids (`cn__req_id`, `sm__ri`) as this cell makes them and files their waiters: the
//! 128 bits of a random version 4 UUID, written on the wire in its lowercase hyphenated form
//! as NVFlare writes them.

/// A request id made here. A waiter is filed under these 16 bytes rather than the 36-byte
/// text: no allocation per request to make or match the key, a short hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RequestId(u128);

/// The length of a request id's text.
pub(crate) const TEXT_LEN: usize = uuid::fmt::Hyphenated::LENGTH;

impl RequestId {
    /// A new id.
    ///
    /// The id must be unguessable: a reply is matched to its waiter by id and target, and a
    /// RETURN by id alone (any hop may bounce a request), so a peer that could predict another
    /// request's id could fail it or, speaking for the target, answer it. A counter or a
    /// per-cell base plus a counter would be predictable from one id seen; 122 bits from a
    /// cryptographically secure generator are not. `Uuid::new_v4` draws them from the OS, one
    /// `getrandom` syscall per request (about 3% of a round trip's CPU); `rand::thread_rng` is
    /// ChaCha12 seeded from the OS and reseeded from it every 64 KiB of output (and after a
    /// fork), per thread: as unpredictable, without a syscall each.
    pub fn new() -> RequestId {
        use rand::RngCore;
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        RequestId(
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .as_u128(),
        )
    }

    /// The id whose text is `s`, if `s` is exactly the text of an id as [`RequestId::text`]
    /// writes it (lowercase, hyphenated): ids are matched as the strings they are on the
    /// wire, so no other spelling of the same UUID answers a request.
    pub fn parse(s: &str) -> Option<RequestId> {
        Self::parse_ascii(s.as_bytes())
    }

    /// [`RequestId::parse`] of a text given as its bytes (an id's text is ASCII: bytes that
    /// are not, or not UTF-8, are no id), so that a received id need not become a `&str`
    /// first.
    pub fn parse_ascii(s: &[u8]) -> Option<RequestId> {
        if s.len() != TEXT_LEN || s.iter().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        // 36 characters are the hyphenated form only (simple 32, braced 38, urn 45);
        // `Uuid::try_parse` is this of the str's bytes
        uuid::Uuid::try_parse_ascii(s)
            .ok()
            .map(|u| RequestId(u.as_u128()))
    }

    /// The id's text, written into `buf`.
    pub fn text(self, buf: &mut [u8; TEXT_LEN]) -> &str {
        uuid::Uuid::from_u128(self.0).hyphenated().encode_lower(buf)
    }

    /// The id's text.
    pub fn to_text(self) -> String {
        self.text(&mut [0; TEXT_LEN]).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_read_back_from_its_text_and_from_no_other_spelling() {
        let id = RequestId::new();
        let text = id.to_text();
        assert_eq!(text.len(), 36);
        assert_eq!(RequestId::parse(&text), Some(id));
        let u = uuid::Uuid::from_u128(id.0);
        assert_eq!(u.get_version_num(), 4, "a version 4 UUID");
        for other in [
            text.to_uppercase(),
            u.simple().to_string(),
            u.braced().to_string(),
            u.urn().to_string(),
            format!("{text} "),
            String::new(),
            "R1".to_string(),
        ] {
            assert_eq!(RequestId::parse(&other), None, "{other:?}");
        }
        assert_ne!(RequestId::new(), id, "random");
        // the bytes of a text parse as the text does; bytes that are not ASCII are no id
        assert_eq!(RequestId::parse_ascii(text.as_bytes()), Some(id));
        let mut bad = text.into_bytes();
        bad[0] = 0xe9;
        assert_eq!(RequestId::parse_ascii(&bad), None);
    }
}
