//! Routes (`"/x"` exact, `"/x/..."` prefix, `"/..."` catch-all) and the
//! table that maps a request path to the service that owns it.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// A validated route.
///
/// ```toml
/// route = "/hello"        # exactly /hello
/// route = "/api/..."      # /api, /api/ and everything below /api/
/// route = "/..."          # every path (the catch-all)
/// ```
///
/// Matching is by whole path segments: `"/api/..."` matches `/api/users`
/// but not `/apiary`. When several routes match, the longest wins, and an
/// exact route beats a prefix route of the same path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Route {
    raw: String,
}

/// The suffix that makes a route a prefix route.
const WILDCARD: &str = "/...";

/// Why a string is not a valid route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route {route:?}: {reason}")]
pub struct InvalidRoute {
    /// The rejected text.
    pub route: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Route {
    /// Parses and validates a route.
    pub fn parse(s: &str) -> Result<Route, InvalidRoute> {
        let fail = |reason| {
            Err(InvalidRoute {
                route: s.to_owned(),
                reason,
            })
        };
        if !s.starts_with('/') {
            return fail("a route must start with \"/\"");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail("a route must not contain whitespace or control characters");
        }
        if s.contains(['?', '#']) {
            return fail("a route is a path: it must not contain \"?\" or \"#\"");
        }
        if !s.is_ascii() {
            return fail("a route must be ASCII (percent-encode other characters)");
        }
        let base = s.strip_suffix(WILDCARD).unwrap_or(s);
        if base.contains("...") {
            return fail("\"...\" may only appear as the last segment, as in \"/api/...\"");
        }
        let is_prefix = s.ends_with(WILDCARD);
        if is_prefix && base.ends_with('/') {
            return fail("a route must not contain empty segments (\"//\")");
        }
        if base.len() > 1 {
            let segments: Vec<&str> = base[1..].split('/').collect();
            for (i, segment) in segments.iter().enumerate() {
                // A trailing slash is allowed on exact routes ("/x/").
                let trailing = i + 1 == segments.len() && !is_prefix;
                if segment.is_empty() && !trailing {
                    return fail("a route must not contain empty segments (\"//\")");
                }
                if *segment == "." || *segment == ".." {
                    return fail("a route must not contain \".\" or \"..\" segments");
                }
            }
        }
        Ok(Route { raw: s.to_owned() })
    }

    /// The route as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True for `"/x/..."` routes.
    pub fn is_prefix(&self) -> bool {
        self.raw.ends_with(WILDCARD)
    }

    /// The path an exact route matches, or the path a prefix route covers
    /// (`"/api"` for `"/api/..."`, `""` for the catch-all).
    fn base(&self) -> &str {
        self.raw.strip_suffix(WILDCARD).unwrap_or(&self.raw)
    }

    /// Whether this route matches a request path (without its query).
    pub fn matches(&self, path: &str) -> bool {
        if self.is_prefix() {
            let base = self.base();
            path == base
                || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
        } else {
            path == self.raw
        }
    }
}

impl TryFrom<String> for Route {
    type Error = InvalidRoute;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Route::parse(&s)
    }
}

impl From<Route> for String {
    fn from(r: Route) -> String {
        r.raw
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Maps request paths to owners by the routes they claim.
///
/// A lookup costs one hash probe per path segment, whatever the number of
/// routes, so that a host with thousands of services routes as fast as one
/// with two. (Kept rather than `matchit`: services claim exact paths and
/// segment prefixes at run time, the longest prefix wins and a claim must
/// name its current owner — matchit's rules for overlapping catch-alls are
/// different, and it cannot tell who owns a route.)
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: HashMap<String, (Route, T)>,
    prefix: HashMap<String, (Route, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            prefix: HashMap::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `route` for `owner`. If the route is already claimed, nothing
    /// changes and the current owner is returned as the error.
    pub fn insert(&mut self, route: Route, owner: T) -> Result<(), &T> {
        let map = if route.is_prefix() {
            &mut self.prefix
        } else {
            &mut self.exact
        };
        let key = route.base().to_owned();
        if map.contains_key(&key) {
            return Err(&map[&key].1);
        }
        map.insert(key, (route, owner));
        Ok(())
    }

    /// The owner of the most specific route matching `path`, with that route.
    pub fn lookup(&self, path: &str) -> Option<(&Route, &T)> {
        if let Some((route, owner)) = self.exact.get(path) {
            return Some((route, owner));
        }
        if self.prefix.is_empty() {
            return None;
        }
        let mut candidate = path;
        loop {
            if let Some((route, owner)) = self.prefix.get(candidate) {
                return Some((route, owner));
            }
            match candidate.rfind('/') {
                Some(i) => candidate = &candidate[..i],
                None => return None,
            }
        }
    }

    /// The owner of exactly `route`, if it is claimed.
    pub fn owner(&self, route: &Route) -> Option<&T> {
        let map = if route.is_prefix() {
            &self.prefix
        } else {
            &self.exact
        };
        map.get(route.base()).map(|(_, owner)| owner)
    }

    /// Every route with its owner, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Route, &T)> {
        self.exact
            .values()
            .chain(self.prefix.values())
            .map(|(r, t)| (r, t))
    }

    /// Keeps only the routes for which `keep` says yes.
    pub fn retain(&mut self, mut keep: impl FnMut(&Route, &T) -> bool) {
        self.exact.retain(|_, (route, owner)| keep(route, owner));
        self.prefix.retain(|_, (route, owner)| keep(route, owner));
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefix.len()
    }

    /// True when no route is claimed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Route {
        Route::parse(s).unwrap()
    }

    #[test]
    fn valid_routes() {
        for ok in [
            "/",
            "/x",
            "/x/",
            "/x/...",
            "/...",
            "/a/b-c/d_e/...",
            "/v1/%20x",
            "/a:b@c",
        ] {
            assert!(Route::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn invalid_routes() {
        for (bad, why) in [
            ("", "start with"),
            ("hello", "start with"),
            ("/a b", "whitespace"),
            ("/a?b", "\"?\""),
            ("/a/.../b", "last segment"),
            ("/a...", "last segment"),
            ("//x", "empty segments"),
            ("/a//b", "empty segments"),
            ("/a//...", "empty segments"),
            ("//...", "empty segments"),
            ("/a/../b", "\"..\""),
            ("/ünï", "ASCII"),
        ] {
            let err = Route::parse(bad).unwrap_err();
            assert!(err.reason.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn matching_is_by_segment() {
        let api = r("/api/...");
        assert!(api.matches("/api"));
        assert!(api.matches("/api/"));
        assert!(api.matches("/api/users/7"));
        assert!(!api.matches("/apiary"));
        assert!(!api.matches("/"));
        assert!(r("/...").matches("/anything/at/all"));
        assert!(r("/...").matches("/"));
        assert!(r("/x").matches("/x"));
        assert!(!r("/x").matches("/x/"));
    }

    #[test]
    fn longest_prefix_wins_and_exact_beats_prefix() {
        let mut t = RouteTable::new();
        t.insert(r("/..."), "root").unwrap();
        t.insert(r("/api/..."), "api").unwrap();
        t.insert(r("/api/v2/..."), "v2").unwrap();
        t.insert(r("/api/v2"), "v2-exact").unwrap();
        let owner = |p: &str| t.lookup(p).map(|(_, o)| *o);
        assert_eq!(owner("/"), Some("root"));
        assert_eq!(owner("/other"), Some("root"));
        assert_eq!(owner("/api"), Some("api"));
        assert_eq!(owner("/api/v1/x"), Some("api"));
        assert_eq!(owner("/api/v2"), Some("v2-exact"));
        assert_eq!(owner("/api/v2/"), Some("v2"));
        assert_eq!(owner("/api/v2/users"), Some("v2"));
        assert_eq!(owner("/api/v20"), Some("api"));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn no_catch_all_means_no_match() {
        let mut t = RouteTable::new();
        t.insert(r("/hello"), 1).unwrap();
        assert!(t.lookup("/hello").is_some());
        assert!(t.lookup("/").is_none());
        assert!(t.lookup("/hello/x").is_none());
    }

    #[test]
    fn duplicate_routes_name_the_owner() {
        let mut t = RouteTable::new();
        t.insert(r("/x/..."), "a").unwrap();
        t.insert(r("/x"), "b").unwrap();
        assert_eq!(t.insert(r("/x/..."), "c"), Err(&"a"));
    }
}
