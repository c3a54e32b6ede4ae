//! Locations as nginx defines them: a match kind (`=`, none, `^~`, `~`, `~*`)
//! plus a path. The rules here are the ones the controller and the dataplane
//! must agree on, so each exists once:
//! - the mapping between the resource's, the wire's and the domain's match kinds;
//! - which two locations are "the same location" (nginx refuses `location /p`
//!   next to `location ^~ /p` as a duplicate), the key [`LocationKey`] compares;
//! - nginx's notation, for messages.

use std::fmt;

use moongate_proto::v1 as pb;

use crate::crd;

/// How a location matches a request's URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocationKind {
    /// `location = /path`
    Exact,
    /// `location /path`
    Prefix,
    /// `location ^~ /path`: a longest-prefix match that skips the regex search.
    PrefixPriority,
    /// `location ~ re`, or `~* re` when `caseless`.
    Regex { caseless: bool },
}

impl LocationKind {
    /// The kind a wire location carries; an unknown value (a newer
    /// controller) is read as a prefix, nginx's default.
    pub fn from_wire(match_kind: i32) -> LocationKind {
        match pb::MatchKind::try_from(match_kind).unwrap_or(pb::MatchKind::Prefix) {
            pb::MatchKind::Prefix => LocationKind::Prefix,
            pb::MatchKind::Exact => LocationKind::Exact,
            pb::MatchKind::PrefixPriority => LocationKind::PrefixPriority,
            pb::MatchKind::Regex => LocationKind::Regex { caseless: false },
            pb::MatchKind::RegexCaseInsensitive => LocationKind::Regex { caseless: true },
        }
    }

    pub fn to_wire(self) -> pb::MatchKind {
        match self {
            LocationKind::Prefix => pb::MatchKind::Prefix,
            LocationKind::Exact => pb::MatchKind::Exact,
            LocationKind::PrefixPriority => pb::MatchKind::PrefixPriority,
            LocationKind::Regex { caseless: false } => pb::MatchKind::Regex,
            LocationKind::Regex { caseless: true } => pb::MatchKind::RegexCaseInsensitive,
        }
    }

    pub fn is_regex(self) -> bool {
        matches!(self, LocationKind::Regex { .. })
    }

    /// nginx's modifier, e.g. `^~`; empty for a plain prefix.
    pub fn modifier(self) -> &'static str {
        match self {
            LocationKind::Prefix => "",
            LocationKind::Exact => "=",
            LocationKind::PrefixPriority => "^~",
            LocationKind::Regex { caseless: false } => "~",
            LocationKind::Regex { caseless: true } => "~*",
        }
    }
}

impl From<crd::MatchKind> for LocationKind {
    fn from(kind: crd::MatchKind) -> LocationKind {
        match kind {
            crd::MatchKind::Prefix => LocationKind::Prefix,
            crd::MatchKind::Exact => LocationKind::Exact,
            crd::MatchKind::PrefixPriority => LocationKind::PrefixPriority,
            crd::MatchKind::Regex => LocationKind::Regex { caseless: false },
            crd::MatchKind::RegexCaseInsensitive => LocationKind::Regex { caseless: true },
        }
    }
}

/// What makes two locations the same nginx `location`: equal keys on one
/// server are a duplicate, and the first route to declare it keeps it.
/// `Prefix` and `PrefixPriority` share a key; a regex is the same location only
/// as the very same pattern with the same case rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocationKey<'a> {
    class: KeyClass,
    path: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum KeyClass {
    Exact,
    Prefix,
    Regex { caseless: bool },
}

impl<'a> LocationKey<'a> {
    pub fn new(kind: LocationKind, path: &'a str) -> LocationKey<'a> {
        let class = match kind {
            LocationKind::Exact => KeyClass::Exact,
            LocationKind::Prefix | LocationKind::PrefixPriority => KeyClass::Prefix,
            LocationKind::Regex { caseless } => KeyClass::Regex { caseless },
        };
        LocationKey { class, path }
    }

    pub fn of(location: &'a pb::Location) -> LocationKey<'a> {
        LocationKey::new(LocationKind::from_wire(location.match_kind), &location.path)
    }
}

/// A location in nginx notation: `= /exact`, `/prefix`, `^~ /p`, `~ re`, `~* re`.
pub struct Nginx<'a>(pub LocationKind, pub &'a str);

impl fmt::Display for Nginx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.modifier() {
            "" => f.write_str(self.1),
            modifier => write!(f, "{modifier} {}", self.1),
        }
    }
}

/// A wire location in nginx notation.
pub fn nginx_location(location: &pb::Location) -> String {
    Nginx(LocationKind::from_wire(location.match_kind), &location.path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_wire() {
        for kind in [
            LocationKind::Exact,
            LocationKind::Prefix,
            LocationKind::PrefixPriority,
            LocationKind::Regex { caseless: false },
            LocationKind::Regex { caseless: true },
        ] {
            assert_eq!(LocationKind::from_wire(kind.to_wire() as i32), kind);
        }
        assert_eq!(LocationKind::from_wire(99), LocationKind::Prefix);
    }

    #[test]
    fn a_prefix_and_a_priority_prefix_are_the_same_location() {
        let key = |kind, path| LocationKey::new(kind, path);
        assert_eq!(key(LocationKind::Prefix, "/p"), key(LocationKind::PrefixPriority, "/p"));
        assert_ne!(key(LocationKind::Prefix, "/p"), key(LocationKind::Exact, "/p"));
        assert_ne!(
            key(LocationKind::Regex { caseless: false }, "/p"),
            key(LocationKind::Regex { caseless: true }, "/p")
        );
        assert_ne!(key(LocationKind::Prefix, "/p"), key(LocationKind::Prefix, "/q"));
    }

    #[test]
    fn nginx_notation() {
        assert_eq!(Nginx(LocationKind::Prefix, "/a").to_string(), "/a");
        assert_eq!(Nginx(LocationKind::PrefixPriority, "/a").to_string(), "^~ /a");
        assert_eq!(Nginx(LocationKind::Regex { caseless: true }, "x$").to_string(), "~* x$");
    }
}
