//! Policy route patterns and token scopes: the first line as a pattern, the second as a scope
//! entry, the third as a request (`METHOD /path?query`), matched every way. Nothing may panic.
#![no_main]

use keygate_core::policy::RoutePattern;
use keygate_core::scope::{RequestPath, RequestTarget, ScopeEntry, percent_decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let pattern = lines.next().unwrap_or("");
    let scope = lines.next().unwrap_or("");
    let request = lines.next().unwrap_or("");
    let (method, uri) = request.split_once(' ').unwrap_or(("GET", request));
    let target = RequestTarget::from_uri(method, uri);
    let _ = RequestPath::parse(target.path);
    let _ = percent_decode(target.query);
    if let Ok(p) = RoutePattern::parse(pattern) {
        let _ = p.matches(target.method, target.path);
    }
    if let Some(entry) = ScopeEntry::parse(scope) {
        let _ = entry.matches(&target);
    }
});
