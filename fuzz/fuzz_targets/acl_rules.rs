//! ACL rules as a policy's `Rules` field carries them (HCL or JSON): parsed, and when they
//! parse, asked about labels cut from the same input, and sent through serde and back.
#![no_main]

use std::sync::Arc;

use catalog::acl::{Access, Authorizer, Resource, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = Rules::parse(text) else {
        return;
    };
    let wire = serde_json::to_string(&rules).expect("rules serialise");
    let back: Rules = serde_json::from_str(&wire).expect("rules deserialise");
    assert_eq!(back, rules);
    let authorizer = Authorizer::new(Arc::new(rules), false);
    for label in text.split(['"', '\n']).take(16) {
        for resource in Resource::ALL {
            for access in [Access::Read, Access::List, Access::Write] {
                let _ = authorizer.allows(resource, label, access);
            }
        }
        let _ = authorizer.allows_key_tree_write(label);
    }
});
