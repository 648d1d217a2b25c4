//! Where the keys the dispatch path reads lie in a header map: an index per key, noted while
//! the map is decoded (or built), so reading `cn__msg_type`, `cn__origin`, ... of a received
//! message is an array index rather than a walk comparing each entry's key.
//!
//! A [`Slot`] names one of these keys; [`Slots`] holds where each one's first entry is.
//! The first entry is the one a walk ([`super::Headers::get`]) finds, so both ways of asking
//! give the same value, whatever a peer sent (a key twice, a thousand entries).

use super::keys;

/// A key the cell reads from every message it receives, looked up by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// `cn__msg_type`.
    MsgType,
    /// `cn__origin`.
    Origin,
    /// `cn__destination`.
    Destination,
    /// `cn__channel`.
    Channel,
    /// `cn__topic`.
    Topic,
    /// `cn__req_id`.
    ReqId,
    /// `cn__reply_expected`.
    ReplyExpected,
    /// `cn__payload_encoding`.
    PayloadEncoding,
    /// `cn__route`.
    Route,
    /// `cn__encrypted`.
    Encrypted,
    /// `cn__return_code`.
    ReturnCode,
    /// `cn__error`.
    Error,
}

/// Number of [`Slot`]s: [`super::known_keys::KNOWN_KEYS`] starts with their keys, in this order, so a
/// known key's index below this is its slot.
pub(super) const N_SLOTS: usize = 12;

impl Slot {
    /// Every slot, in the order of [`super::known_keys::KNOWN_KEYS`].
    #[cfg(test)]
    pub const ALL: [Slot; N_SLOTS] = [
        Slot::MsgType,
        Slot::Origin,
        Slot::Destination,
        Slot::Channel,
        Slot::Topic,
        Slot::ReqId,
        Slot::ReplyExpected,
        Slot::PayloadEncoding,
        Slot::Route,
        Slot::Encrypted,
        Slot::ReturnCode,
        Slot::Error,
    ];

    /// The key this slot holds.
    pub const fn key(self) -> &'static str {
        match self {
            Slot::MsgType => keys::MSG_TYPE,
            Slot::Origin => keys::ORIGIN,
            Slot::Destination => keys::DESTINATION,
            Slot::Channel => keys::CHANNEL,
            Slot::Topic => keys::TOPIC,
            Slot::ReqId => keys::REQ_ID,
            Slot::ReplyExpected => keys::REPLY_EXPECTED,
            Slot::PayloadEncoding => keys::PAYLOAD_ENCODING,
            Slot::Route => keys::ROUTE,
            Slot::Encrypted => keys::ENCRYPTED,
            Slot::ReturnCode => keys::RETURN_CODE,
            Slot::Error => keys::ERROR,
        }
    }
}

/// No entry noted for a slot (the key is absent, or its first entry lies past [`MAX_NOTED`]).
const NONE: u8 = u8::MAX;

/// Entries at this index or beyond are not noted (an index must fit a `u8`); a map that long
/// is looked up by a walk ([`Slots::covers`]).
pub(super) const MAX_NOTED: usize = NONE as usize;

/// The index of each slot's first entry in a map's entries. 12 bytes per map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slots([u8; N_SLOTS]);

impl Default for Slots {
    fn default() -> Self {
        Slots([NONE; N_SLOTS])
    }
}

impl Slots {
    /// Note that entry `at` has the known key of index `known` (see [`N_SLOTS`]), unless an
    /// earlier entry has it already.
    pub fn note(&mut self, known: usize, at: usize) {
        if let Some(s) = self.0.get_mut(known) {
            if *s == NONE && at < MAX_NOTED {
                *s = at as u8;
            }
        }
    }

    /// The index of the slot's first entry, if noted.
    pub fn get(&self, s: Slot) -> Option<usize> {
        match self.0[s as usize] {
            NONE => None,
            i => Some(usize::from(i)),
        }
    }

    /// True if a slot not noted means its key is absent, for a map of `len` entries (false
    /// if the map has entries past those that can be noted).
    pub fn covers(len: usize) -> bool {
        len <= MAX_NOTED
    }
}
