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
}
