//! Who a connection may speak for, and whether a cell relays traffic for others.
//!
//! A connection proves one name: the FQCN its peer gave in HELLO (or READY), bound to the
//! certificate CN under mutual TLS. Every message carries its sender in `cn__origin`, which
//! the sender writes itself; [`vouches`] decides whether the connection a message arrived on
//! can stand behind that claim. NVFlare routes along the FQCN tree: a cell speaks for itself
//! and for the cells below it (`site-1` forwards for `site-1.job7`), and a cell's parent
//! routes the rest of the network to it. So:
//!
//! - on a connection a peer opened to us, the origin must be that peer or one of its
//!   descendants (`peer.x.y`), unless the peer is one of our own FQCN ancestors (it routes
//!   for everyone down to us);
//! - on a connection we opened (to our parent), the parent is trusted to route for others;
//! - no connection may speak for this cell itself.

use crate::fqcn::{self, Fqcn};

/// Whether a cell forwards messages that are addressed to another cell.
///
/// NVFlare cells forward (a client root relays for its job cells, the server root relays
/// between sites and job cells), so [`Forwarding::Relay`] is the default of
/// [`crate::CellBuilder`]. A cell that is an endpoint and nothing else (`ferry serve`, `ferry
/// get`) should use [`Forwarding::Off`]: then it never carries traffic between its peers, and a
/// request addressed elsewhere gets a `comm_error` RETURN ("cannot forward") at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// Forward messages for other cells along the routing table (NVFlare's behaviour).
    #[default]
    Relay,
    /// Handle only messages addressed to this cell; refuse to relay anything else.
    Off,
}

/// True if a message claiming `origin` may arrive on a connection to `peer`.
///
/// `outbound` is true for connections this cell opened ([`crate::Cell::connect`]): the peer is
/// our parent, which routes for the rest of the network.
pub(crate) fn vouches(own: &Fqcn, peer: &str, outbound: bool, origin: &str) -> bool {
    if origin == own.as_str() {
        return false;
    }
    if outbound {
        return true;
    }
    // validated in place: no copy of either name per message
    if fqcn::validate(peer).is_err() {
        return false;
    }
    if fqcn::is_ancestor(peer, own.as_str()) || origin == peer {
        return true;
    }
    fqcn::validate(origin).is_ok() && fqcn::is_ancestor(peer, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Fqcn {
        Fqcn::new(s).unwrap()
    }

    #[test]
    fn accepted_connections_speak_for_their_subtree_only() {
        let me = f("server");
        assert!(vouches(&me, "site-1", false, "site-1"));
        assert!(vouches(&me, "site-1", false, "site-1.j1"));
        assert!(vouches(&me, "site-1", false, "site-1.j1.x"));
        assert!(!vouches(&me, "site-1", false, "site-2"));
        assert!(!vouches(&me, "site-1", false, "site-10"));
        assert!(!vouches(&me, "site-1.j1", false, "site-1"));
        assert!(!vouches(&me, "site-1", false, "server"));
        assert!(!vouches(&me, "site-1", false, "not a name"));
        // our own name, never
        assert!(!vouches(&me, "server.j1", false, "server"));
    }

    #[test]
    fn parents_route_for_others() {
        let me = f("site-1.j1");
        // the connection we opened
        assert!(vouches(&me, "server", true, "site-2"));
        assert!(!vouches(&me, "server", true, "site-1.j1"));
        // an FQCN ancestor that connected to us routes for everyone below it
        assert!(vouches(&me, "site-1", false, "server.j3"));
        assert!(!vouches(&me, "site-1", false, "site-1.j1"));
    }
}
