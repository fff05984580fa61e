//! Image references (a manifest's `container.image` and `init[].image`, which become a
//! positional of podman's argv): any text must parse or be refused, never panic; whatever
//! parses must be safe on an argv (no leading '-', printable ASCII, no `..` in the name),
//! within the length limits, and reassemble from its parts to the same text.
#![no_main]

use fleet_contract::{Deployment, ImageReference, MAX_IMAGE_NAME_BYTES, MAX_IMAGE_TAG_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = ImageReference::parse(text) else {
        return;
    };
    assert!(!text.starts_with('-'), "accepted an option: {text:?}");
    assert!(
        text.bytes().all(|b| b.is_ascii_graphic()),
        "accepted {text:?}"
    );
    // A tag may hold "..", a name never (no path traversal through a repository path).
    assert!(!r.path.contains(".."), "accepted a '..': {text:?}");
    assert!(
        !r.path.contains("//") && !r.path.starts_with('/'),
        "empty part: {text:?}"
    );
    assert!(
        r.path.bytes().all(|b| !b.is_ascii_uppercase()),
        "upper case: {text:?}"
    );
    let name_len = r.domain.map_or(0, |d| d.len() + 1) + r.path.len();
    assert!(name_len <= MAX_IMAGE_NAME_BYTES, "name of {name_len} bytes");
    assert!(r
        .tag
        .is_none_or(|t| !t.is_empty() && t.len() <= MAX_IMAGE_TAG_BYTES));
    let mut again = String::new();
    if let Some(d) = r.domain {
        again.push_str(d);
        again.push('/');
    }
    again.push_str(r.path);
    if let Some(t) = r.tag {
        again.push(':');
        again.push_str(t);
    }
    if let Some(d) = r.digest {
        again.push('@');
        again.push_str(d);
    }
    assert_eq!(again, text, "the parts do not reassemble");
    assert_eq!(ImageReference::parse(&again), Ok(r));
    // An accepted reference is accepted as a manifest's image too.
    let doc = format!(
        r#"{{"apiVersion":"fleet/v1","name":"a","revision":1,"container":{{"image":"{text}"}}}}"#
    );
    if let Err(e) = Deployment::from_json_slice(doc.as_bytes()) {
        panic!("a valid reference was refused in a manifest: {e}");
    }
});
