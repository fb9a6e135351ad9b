//! The policy file: the input up to a `#%%` line is the `[roles]` part of a configuration file
//! (TOML, one table per role); each line after it is a request (`METHOD /path?query`), decided for
//! every role and used as a token scope entry. Parsing may refuse, but nothing may panic, and a
//! policy that parsed must decide every request.
#![no_main]

use std::collections::BTreeMap;

use keygate_core::policy::{Policy, RoleTable};
use keygate_core::role::RoleSet;
use keygate_core::scope::{RequestTarget, ScopeEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, requests) = text.split_once("\n#%%\n").unwrap_or((text, ""));
    let Ok(tables) = toml::from_str::<BTreeMap<String, RoleTable>>(file) else {
        return;
    };
    let Ok(policy) = Policy::from_role_tables(tables) else {
        return;
    };
    let scope: Vec<ScopeEntry> = requests.lines().filter_map(ScopeEntry::parse).collect();
    let sets: Vec<RoleSet> = policy
        .roles()
        .filter_map(|(role, _)| RoleSet::from_stored(role.as_str()).ok())
        .collect();
    for set in &sets {
        let _ = policy.rate_limit_for(set);
        let _ = policy.long_lived_scope(set, &scope);
        for line in requests.lines() {
            let (method, uri) = line.split_once(' ').unwrap_or(("GET", line));
            let _ = policy.allows(set, &RequestTarget::from_uri(method, uri));
        }
    }
});
