//! Text for people: what a log line, a parked line or `status` may show of something long.

/// Cuts text at a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A value as one word of a command to paste into a shell: as it is when it is plain, else in
/// single quotes, which POSIX shells and PowerShell both read literally (PowerShell also ends
/// them at typographic quotes, which are doubled like `'`). A backslash is plain only on
/// Windows, where it separates paths; a POSIX shell would drop it.
pub fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._:-=@+,".contains(c);
    if !s.is_empty() && s.chars().all(|c| plain(c) || (cfg!(windows) && c == '\\')) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' if cfg!(windows) => out.push_str("''"),
            '\'' => out.push_str("'\\''"),
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' if cfg!(windows) => {
                out.push(c);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `--name=VALUE` for a command to paste: the `=` form, so that a value starting with `-` is
/// not taken for an option.
pub fn shell_option(name: &str, value: &str) -> String {
    format!("--{name}={}", shell_word(value))
}

/// The start of an answer's body for a message: trimmed, at most 300 bytes.
pub fn excerpt(body: &[u8]) -> String {
    // Error pages often quote the request, query and all: its values may be keys.
    truncate(
        &crate::redact::text(String::from_utf8_lossy(body).trim()),
        300,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("äöü", 3), "ä…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn shell_words_are_read_back_as_they_were() {
        assert_eq!(shell_word("support"), "support");
        assert_eq!(shell_option("identifier", "--all"), "--identifier=--all");
        if cfg!(windows) {
            assert_eq!(shell_word("it's"), "'it''s'");
            assert_eq!(
                shell_word("x\u{2019}; calc; \u{2019}x"),
                "'x\u{2019}\u{2019}; calc; \u{2019}\u{2019}x'"
            );
        } else {
            assert_eq!(shell_word("it's $(x)"), "'it'\\''s $(x)'");
            assert_eq!(shell_word("back\\slash"), "'back\\slash'");
            // What bash makes of each word is the value itself.
            for v in [
                "it's",
                "a b",
                "$(touch /tmp/x)",
                "`x`",
                "back\\slash",
                "--all",
                "Ünïcode ‘q’",
            ] {
                let out = std::process::Command::new("bash")
                    .arg("-c")
                    .arg(format!("printf %s {}", shell_word(v)))
                    .output()
                    .unwrap();
                assert_eq!(String::from_utf8(out.stdout).unwrap(), v);
            }
        }
    }
}
