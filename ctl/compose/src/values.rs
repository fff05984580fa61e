//! Compose's value syntaxes, each read exactly as docker compose reads it or refused:
//! variable interpolation, string commands (split like go-shellwords), Go durations and
//! byte sizes.

/// Why a value cannot be carried, in one line.
pub type Refusal = String;

/// Compose interpolation: `$$` is a literal `$`; `$NAME` and `${...}` take their value from
/// the environment of whoever runs `docker compose`, which a manifest has no equivalent of,
/// so they are refused (as is a lone `$`, which Compose itself refuses).
pub fn interpolate(s: &str) -> Result<String, Refusal> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some(&n) if n == '{' || n == '_' || n.is_ascii_alphabetic() => {
                let var: String = if n == '{' {
                    chars.by_ref().take_while(|&c| c != '}').collect()
                } else {
                    let mut v = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '_' || c.is_ascii_alphanumeric() {
                            v.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    v
                };
                let var = var.trim_start_matches('{');
                let name: String = var
                    .chars()
                    .take_while(|c| *c == '_' || c.is_ascii_alphanumeric())
                    .take(64)
                    .collect();
                return Err(format!(
                    "uses the variable ${name}, which docker compose fills in from its own environment; \
                     resolve it first (`docker compose config` prints the file with variables filled in), \
                     or write $$ for a literal $"
                ));
            }
            _ => return Err(
                "holds a `$` that Compose reads as a variable reference; write $$ for a literal $"
                    .into(),
            ),
        }
    }
    Ok(out)
}

/// Splits a string command as docker compose does (go-shellwords without environment or
/// backtick expansion): words separated by blanks; '…' literal; "…" and outside quotes a
/// backslash takes the next character literally (`\t` and `\n` become a tab and a newline).
/// Where Compose would quietly cut the command short (an unquoted `;`, `&`, `|`, `<`, `>`)
/// or refuse it (`(`, `)`), or keep shell syntax the shell never sees (`` ` ``, `$(`), the
/// command is refused: it was written for a shell, so write it as `["sh", "-c", "…"]`.
pub fn split_command(s: &str) -> Result<Vec<String>, Refusal> {
    let mut args = Vec::new();
    let mut buf = String::new();
    let mut have = false;
    let (mut single, mut double, mut escaped) = (false, false, false);
    let shell = |c: char| {
        Err(format!(
            "is a string with shell syntax (`{c}` outside quotes) that docker compose does not run \
             through a shell; write it as a list, e.g. [\"sh\", \"-c\", \"…\"]"
        ))
    };
    for c in s.chars() {
        if escaped {
            escaped = false;
            buf.push(match c {
                't' => '\t',
                'n' => '\n',
                c => c,
            });
            have = true;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => {
                single = !single;
                have = true;
            }
            '"' if !single => {
                double = !double;
                have = true;
            }
            ' ' | '\t' | '\r' | '\n' if !single && !double => {
                if have {
                    args.push(std::mem::take(&mut buf));
                    have = false;
                }
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '`' if !single && !double => {
                return shell(c);
            }
            c => {
                buf.push(c);
                have = true;
            }
        }
    }
    if escaped || single || double {
        return Err("is a string with an unclosed quote or a trailing backslash".into());
    }
    if have {
        args.push(buf);
    }
    Ok(args)
}

/// A Go duration (`1m30s`, `500ms`, `1.5h`, `0`) as nanoseconds; negative ones are refused.
pub fn duration_nanos(s: &str) -> Result<u128, Refusal> {
    let bad = || {
        format!(
            "{:?} is not a duration such as \"30s\", \"1m30s\" or \"500ms\"",
            shorten(s)
        )
    };
    if s == "0" {
        return Ok(0);
    }
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(scaled(num, scale).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// A duration in whole seconds, rounded up; `Some(exact)` says whether it was whole.
pub fn duration_secs(s: &str) -> Result<(u64, bool), Refusal> {
    let n = duration_nanos(s)?;
    let secs = n.div_ceil(1_000_000_000);
    let secs = u64::try_from(secs).map_err(|_| format!("{:?} is too long", shorten(s)))?;
    Ok((secs, n % 1_000_000_000 == 0))
}

/// A byte size as docker reads one (`units.RAMInBytes`): a number, optionally with a
/// fraction, and a unit b, k, m, g, t, p (optionally followed by `b`, any case), binary
/// multiples (`ki`/`kib` alike); a bare number is bytes.
pub fn bytes(s: &str) -> Result<u128, Refusal> {
    let bad = || {
        format!(
            "{:?} is not a size such as \"64m\", \"1g\" or a number of bytes",
            shorten(s)
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u128 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1 << 10,
        "m" | "mb" | "mi" | "mib" => 1 << 20,
        "g" | "gb" | "gi" | "gib" => 1 << 30,
        "t" | "tb" | "ti" | "tib" => 1 << 40,
        "p" | "pb" | "pi" | "pib" => 1 << 50,
        _ => return Err(bad()),
    };
    scaled(num, scale).ok_or_else(bad)
}

/// `num` (digits, at most one `.`) times `scale`, the fraction truncated below one unit of 1.
fn scaled(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() > 30 {
        return None;
    }
    let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = whole.checked_mul(scale)?;
    // Up to 18 fractional digits are exact enough for any unit here.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let denom = 10u128.pow(frac.len() as u32);
        value = value.checked_add(digits.checked_mul(scale)? / denom)?;
    }
    Some(value)
}

/// At most 64 characters of a value for a message.
pub fn shorten(s: &str) -> String {
    crate::yaml::shorten(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation() {
        assert_eq!(interpolate("a$$b").unwrap(), "a$b");
        assert_eq!(interpolate("plain").unwrap(), "plain");
        for s in ["$HOME", "x${TAG:-1}", "${A}", "$", "a$ b", "$1"] {
            assert!(interpolate(s).is_err(), "{s}");
        }
        assert!(interpolate("x${TAG:-1}").unwrap_err().contains("$TAG"));
    }

    #[test]
    fn commands_split_like_compose() {
        let ok = |s: &str| split_command(s).unwrap();
        assert_eq!(ok("httpd -f -p 8080"), ["httpd", "-f", "-p", "8080"]);
        assert_eq!(ok("echo 'a b' \"c d\""), ["echo", "a b", "c d"]);
        assert_eq!(
            ok(r#"echo "say \"hi\"" a\ b"#),
            ["echo", "say \"hi\"", "a b"]
        );
        assert_eq!(ok(r"printf 'a\tb' x\ty"), ["printf", r"a\tb", "x\ty"]);
        assert_eq!(
            ok("sh -c 'echo a && echo b'"),
            ["sh", "-c", "echo a && echo b"]
        );
        assert_eq!(ok("echo ''"), ["echo", ""]);
        assert_eq!(ok("  "), Vec::<String>::new());
        for s in [
            "echo a && echo b",
            "a | b",
            "a > f",
            "a;b",
            "(a)",
            "echo `id`",
            "echo $(id)",
            "echo 'open",
            "echo \\",
        ] {
            assert!(split_command(s).is_err(), "{s}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_secs("30s").unwrap(), (30, true));
        assert_eq!(duration_secs("1m30s").unwrap(), (90, true));
        assert_eq!(duration_secs("1h").unwrap(), (3600, true));
        assert_eq!(duration_secs("1.5s").unwrap(), (2, false));
        assert_eq!(duration_secs("500ms").unwrap(), (1, false));
        assert_eq!(duration_secs("0").unwrap(), (0, true));
        for s in [
            "",
            "10",
            "-1s",
            "1x",
            "s",
            "1..5s",
            "99999999999999999999999999999999h",
        ] {
            assert!(duration_secs(s).is_err(), "{s}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes("32m").unwrap(), 32 << 20);
        assert_eq!(bytes("1g").unwrap(), 1 << 30);
        assert_eq!(bytes("1GB").unwrap(), 1 << 30);
        assert_eq!(bytes("512").unwrap(), 512);
        assert_eq!(bytes("1.5k").unwrap(), 1536);
        for s in ["", "m", "1x", "-1m", "1.2.3m"] {
            assert!(bytes(s).is_err(), "{s}");
        }
    }
}
