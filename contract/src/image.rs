//! Image references, checked against the distribution reference grammar before one reaches
//! podman's argv:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path                      (at most 255 bytes)
//! domain     := host [ ":" port ]                        (host: DNS labels, or [IPv6])
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := ( "sha256" | "sha384" | "sha512" ) ":" hex  (64, 96, 128 of [0-9a-f])
//! ```
//!
//! The first `/`-separated part is the domain when it holds a `.` or a `:`, is `localhost`,
//! or has an upper-case letter (as the distribution code splits names). A reference can
//! therefore never start with `-` (no option injection) nor hold `..`, spaces, control or
//! non-ASCII characters.

/// Longest name (domain and path) podman and the distribution code accept.
pub const MAX_IMAGE_NAME_BYTES: usize = 255;
/// Longest tag.
pub const MAX_IMAGE_TAG_BYTES: usize = 128;

/// An image reference split into its parts (all borrowed from the checked text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageReference<'a> {
    /// Registry host and optional port, e.g. `registry.local:5000`.
    pub domain: Option<&'a str>,
    /// Repository path, e.g. `library/alpine`.
    pub path: &'a str,
    /// Tag, e.g. `3.19`.
    pub tag: Option<&'a str>,
    /// Digest, e.g. `sha256:…`.
    pub digest: Option<&'a str>,
}

impl<'a> ImageReference<'a> {
    /// Parses `text`; the error says what is wrong without quoting more than a character.
    pub fn parse(text: &'a str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if let Some((i, c)) = text.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
            return Err(format!(
                "has {} at byte {i}; an image reference is printable ASCII without spaces",
                describe(c)
            ));
        }
        if text.starts_with('-') {
            return Err("starts with '-'; an image reference starts with a letter or digit".into());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (text, None),
        };
        if let Some(d) = digest {
            check_digest(d)?;
        }
        let last_part = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_part..].find(':') {
            Some(j) => (&rest[..last_part + j], Some(&rest[last_part + j + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t)?;
        }
        if name.len() > MAX_IMAGE_NAME_BYTES {
            return Err(format!(
                "its name is {} bytes; at most {MAX_IMAGE_NAME_BYTES}",
                name.len()
            ));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path)) if is_domain(first) => (Some(first), path),
            _ => (None, name),
        };
        if let Some(d) = domain {
            check_domain(d)?;
        }
        check_path(path)?;
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }
}

fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_ascii() => format!("the control character {:?}", c),
        c => format!("the non-ASCII character U+{:04X}", u32::from(c)),
    }
}

fn is_domain(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(inner) = domain.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or("its registry has '[' without ']'")?;
        let ok = !addr.is_empty()
            && addr.contains(':')
            && addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !ok {
            return Err("its registry's IPv6 address is not valid".into());
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err("its registry has text after ']' that is not a port".into()),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        for label in host.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
            if !ok {
                return Err(
                    "its registry host is not a host name (labels of letters, digits and inner '-')"
                        .into(),
                );
            }
        }
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65_535).contains(&p));
        if !ok {
            return Err("its registry port is not a number in 1..=65535".into());
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        check_component(component.as_bytes())?;
    }
    Ok(())
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn check_component(c: &[u8]) -> Result<(), String> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bad = || {
        Err("its path has a part that is not lower-case letters and digits joined by '.', '_', '__' or '-'"
            .to_owned())
    };
    if c.is_empty() {
        return Err("its path has an empty part ('//', or '/' at an end)".into());
    }
    let mut i = 0;
    loop {
        let start = i;
        while i < c.len() && alnum(c[i]) {
            i += 1;
        }
        if i == start {
            return bad();
        }
        if i == c.len() {
            return Ok(());
        }
        match c[i] {
            b'.' => i += 1,
            b'_' => i += if c.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while c.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return bad(),
        }
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    if b.is_empty() || b.len() > MAX_IMAGE_TAG_BYTES {
        return Err(format!(
            "its tag is {} bytes; 1..={MAX_IMAGE_TAG_BYTES}",
            b.len()
        ));
    }
    if !word(b[0]) || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err(
            "its tag is not letters, digits, '_', '.' and '-' (starting with a letter, digit or '_')"
                .into(),
        );
    }
    Ok(())
}

/// `algorithm:hex` for the algorithms podman's digest library knows, with their lengths.
fn check_digest(digest: &str) -> Result<(), String> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or("its digest is not algorithm:hex")?;
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("its digest algorithm is not sha256, sha384 or sha512".into()),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "its digest is not {len} lower-case hex digits after {algo}:"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[test]
    fn valid_references_parse_into_their_parts() {
        let d = format!("sha256:{HEX}");
        // (reference, domain, path, tag, digest); an empty path: only that it parses.
        type Case<'a> = (
            String,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            ("test_com".into(), None, "test_com", None, None),
            ("test.com:tag".into(), None, "test.com", Some("tag"), None),
            ("test.com:5000".into(), None, "test.com", Some("5000"), None),
            (
                "test.com/repo:tag".into(),
                Some("test.com"),
                "repo",
                Some("tag"),
                None,
            ),
            (
                "test:5000/repo".into(),
                Some("test:5000"),
                "repo",
                None,
                None,
            ),
            (
                "test:5000/repo:tag".into(),
                Some("test:5000"),
                "repo",
                Some("tag"),
                None,
            ),
            (
                format!("test:5000/repo@{d}"),
                Some("test:5000"),
                "repo",
                None,
                Some(&d),
            ),
            (
                format!("test:5000/repo:tag@{d}"),
                Some("test:5000"),
                "repo",
                Some("tag"),
                Some(&d),
            ),
            (
                "lowercase:Uppercase".into(),
                None,
                "lowercase",
                Some("Uppercase"),
                None,
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux".into(),
                Some("sub-dom1.foo.com"),
                "bar/baz/quux",
                None,
                None,
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com".into(),
                Some("b.gcr.io"),
                "test.example.com/my-app",
                Some("test.example.com"),
                None,
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com".into(),
                Some("xn--n3h.com"),
                "myimage",
                Some("xn--n3h.com"),
                None,
            ),
            (
                "foo_bar.com:8080".into(),
                None,
                "foo_bar.com",
                Some("8080"),
                None,
            ),
            (
                "192.168.1.1:5000/repo".into(),
                Some("192.168.1.1:5000"),
                "repo",
                None,
                None,
            ),
            (
                "[2001:db8::1]/repo".into(),
                Some("[2001:db8::1]"),
                "repo",
                None,
                None,
            ),
            (
                "[2001:db8::1]:5000/repo:v1".into(),
                Some("[2001:db8::1]:5000"),
                "repo",
                Some("v1"),
                None,
            ),
            (
                "localhost/web:1".into(),
                Some("localhost"),
                "web",
                Some("1"),
                None,
            ),
            (
                "localhost/fleet-example/busybox:1".into(),
                Some("localhost"),
                "fleet-example/busybox",
                Some("1"),
                None,
            ),
            (
                "Docker.IO/library/alpine:3.19".into(),
                Some("Docker.IO"),
                "library/alpine",
                Some("3.19"),
                None,
            ),
            ("a__b/c.d/e---f".into(), None, "a__b/c.d/e---f", None, None),
            // Found by the image_reference fuzz target: a tag may hold "..".
            (
                "0:i..A2.38.iff".into(),
                None,
                "0",
                Some("i..A2.38.iff"),
                None,
            ),
            (format!("a/{}", "b".repeat(253)), None, "", None, None),
            (format!("a:{}", "t".repeat(128)), None, "", None, None),
            (format!("r.io/a@sha512:{HEX}{HEX}"), None, "", None, None),
        ];
        for (text, domain, path, tag, digest) in &cases {
            let r = ImageReference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            if !path.is_empty() {
                assert_eq!(
                    (r.domain, r.path, r.tag, r.digest),
                    (*domain, *path, *tag, digest.as_deref()),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn invalid_references_are_refused() {
        let cases = [
            "".to_owned(),
            ":justtag".into(),
            format!("@sha256:{HEX}"),
            "repo@sha256:ffffffffffffffffffffffffffffff".into(),
            format!("validname@invaliddigest:{HEX}"),
            format!("validname@sha256:{HEX}{HEX}{HEX}"),
            format!("validname@sha256:{}", HEX.to_uppercase()),
            format!("validname@sha512:{HEX}"),
            "Uppercase:tag".into(),
            "test:5000/Uppercase/lowercase:tag".into(),
            "aa/asdf$$^/aa".into(),
            "a".repeat(256),
            format!("a/{}", "b".repeat(254)),
            "a".repeat(512),
            format!("a:{}", "t".repeat(129)),
            "--privileged".into(),
            "-h".into(),
            "../../etc/passwd".into(),
            "./x".into(),
            "file:///x".into(),
            "file:///etc/passwd".into(),
            "docker://alpine".into(),
            "alpine\u{200b}".into(),
            "alpine latest".into(),
            "alpine\0".into(),
            "alpine\n".into(),
            "foo..bar".into(),
            "foo.-bar".into(),
            "foo___bar".into(),
            "foo-".into(),
            "foo/".into(),
            "/foo".into(),
            "foo//bar".into(),
            "foo:".into(),
            "foo:-tag".into(),
            "foo:.tag".into(),
            "foo@".into(),
            "[fe80::1%eth0]:5000/repo".into(),
            "[2001:db8::1]".into(),
            "[2001:db8::1]x/repo".into(),
            "host:99999/repo".into(),
            "host:/repo".into(),
            "-host.com/repo".into(),
            "host-.com/repo".into(),
            "ho_st.com/repo".into(),
            "a@b@c".into(),
        ];
        for text in &cases {
            assert!(
                ImageReference::parse(text).is_err(),
                "{:?} was accepted",
                crate::quote(text)
            );
        }
    }

    #[test]
    fn messages_never_quote_the_reference() {
        let long = format!("x{}", "\u{200b}".repeat(70_000));
        let e = ImageReference::parse(&long).unwrap_err();
        assert!(e.len() < 120, "{e}");
        assert!(e.contains("U+200B"), "{e}");
    }
}
