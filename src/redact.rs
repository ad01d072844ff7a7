//! What may be shown of values that can hold a secret: a URL's user info and query values
//! (`https://user:PW@host/calls?api_key=...`), a header's value, a remote answer that quotes
//! the request.
//!
//! Secrets proper (API keys, connection strings, tokens) are [`crate::types::Secret`] and
//! never print. These helpers are for values that are mostly harmless and sometimes hold a
//! secret inside: they keep what helps an operator (scheme, host, port, path, parameter and
//! header names) and hide the rest. Every URL that reaches a message, a log line, an origin
//! stored in the outbox or a label goes through [`url`] (or [`url_text`] while it is text),
//! so that one rule decides what is shown.

use std::fmt::Write;

/// What stands for a hidden value.
const HIDDEN: &str = "***";

/// `url` for messages, origins and labels: without user info (a name can be half of a
/// credential, and the password is one), with the value of every query parameter and the
/// fragment replaced by `***`. Scheme, host, port, path and parameter names stay, so the
/// operator still sees which page was meant (`?api_key=***&page=***`).
pub fn url(url: &url::Url) -> String {
    if url.cannot_be_a_base() {
        // `ann:pw@host/x` parses with the scheme `ann` and no host: where user info ends is
        // only told by the text.
        return unparsed(url.as_str());
    }
    let mut u = url.clone();
    // Both only fail for URLs that cannot have user info (`mailto:`), which then have none.
    let _ = u.set_password(None);
    let _ = u.set_username("");
    let query = u.query().map(mask_query);
    u.set_query(None);
    u.set_fragment(None);
    let mut out = u.to_string();
    if let Some(q) = query {
        out.push('?');
        out.push_str(&q);
    }
    if url.fragment().is_some() {
        out.push('#');
        out.push_str(HIDDEN);
    }
    out
}

/// A URL that is still text: a template with `{cursor}`-style placeholders, a next link from
/// an answer, a configuration value that does not parse. As [`url`] once parsed; else
/// everything up to the last `@` before the query is dropped after the scheme, and the query
/// and fragment are masked the same way, so the operator still sees what did not parse.
pub fn url_text(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(u) => url(&u),
        Err(_) => unparsed(text),
    }
}

/// [`url_text`] for text that is no URL with a host.
fn unparsed(text: &str) -> String {
    let (rest, fragment) = match text.split_once('#') {
        Some((r, _)) => (r, true),
        None => (text, false),
    };
    let (before, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (scheme, place) = match before.split_once("://") {
        Some((s, p)) => (Some(s), p),
        None => (None, before),
    };
    // Unparseable, so `@` may sit anywhere (a password with a `/` in it): drop up to the last.
    let place = place.rsplit_once('@').map_or(place, |(_, p)| p);
    let mut out = String::new();
    if let Some(s) = scheme {
        let _ = write!(out, "{s}://");
    }
    out.push_str(place);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&mask_query(q));
    }
    if fragment {
        out.push('#');
        out.push_str(HIDDEN);
    }
    out
}

/// Free text from elsewhere (an error page, an answer's body) that may quote a URL or the
/// request's path and query: every `scheme://user:pw@` loses its user info, and every
/// `name=value` after a `?` its value. Other text stays as it is.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['?', ':']) {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        // JSON may escape the slashes (`https:\/\/`, PHP's json_encode does by default).
        let scheme_end = ["://", ":\\/\\/"].into_iter().find(|s| tail.starts_with(s));
        if let Some(sep) = scheme_end {
            let after = &tail[sep.len()..];
            out.push_str(sep);
            let end = after.find(ends_authority).unwrap_or(after.len());
            let authority = &after[..end];
            out.push_str(authority.rsplit_once('@').map_or(authority, |(_, h)| h));
            rest = &after[end..];
        } else if let Some(after) = tail.strip_prefix('?') {
            out.push('?');
            let end = query_end(after);
            let query = &after[..end];
            // Prose ("why? because") has no `name=value` pairs: leave it be.
            if query.contains('=') {
                out.push_str(&mask_pairs(query));
            } else {
                out.push_str(query);
            }
            rest = &after[end..];
        } else {
            out.push(':');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    scrub(&out)
}

/// Secret values the process has read (every [`crate::types::Secret`], the parts of a
/// connection string that are passwords, the `Authorization` values built from them): text
/// from elsewhere that quotes one back (an error page that echoes the request's headers) has
/// it replaced by `***` before anyone sees it. A set: reading a secret again adds nothing.
static KNOWN: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Values shorter than this are not remembered: they would mask ordinary words.
const SHORTEST: usize = 4;

/// Remembers `value` as a secret, with the password of a connection string in it (the URL
/// form's, or `password=`/`pwd=` of the key/value form).
pub fn remember(value: &str) {
    let value = value.trim();
    let mut found = vec![value.to_owned()];
    if let Ok(u) = url::Url::parse(value)
        && let Some(pw) = u.password()
    {
        found.push(pw.to_owned());
        if let Ok(decoded) = percent_decode(pw) {
            found.push(decoded);
        }
    }
    for pair in value.split(';') {
        if let Some((k, v)) = pair.split_once('=') {
            let k = k.trim().to_ascii_lowercase();
            if k == "password" || k == "pwd" {
                found.push(v.trim().trim_matches(['{', '}']).to_owned());
            }
        }
    }
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    for f in found {
        if f.chars().count() >= SHORTEST {
            known.insert(f);
        }
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// `text` with every remembered secret replaced by `***`, the longest first.
pub fn scrub(text: &str) -> String {
    let known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if known.is_empty() || !known.iter().any(|k| text.contains(k.as_str())) {
        return text.to_owned();
    }
    let mut by_length: Vec<&String> = known.iter().collect();
    by_length.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let mut out = text.to_owned();
    for k in by_length {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), HIDDEN);
        }
    }
    out
}

/// Headers for `Debug`: names only.
pub fn headers(headers: &[(String, String)]) -> String {
    let mut out = String::from("[");
    for (i, (name, _)) in headers.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{name}: ***");
    }
    out.push(']');
    out
}

/// A query with its values hidden: `a=1&b` becomes `a=***&***` (a bare item may be a token).
fn mask_query(query: &str) -> String {
    query
        .split('&')
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, _)) => format!("{name}={HIDDEN}"),
            None => HIDDEN.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// [`mask_query`] for a query quoted in text: items are also separated the ways HTML and
/// JSON write `&` (`&amp;`, `\u0026`), and an item without `=` is kept (it is text).
fn mask_pairs(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    loop {
        let (item, sep, next) = match ["&amp;", "\\u0026", "&"]
            .iter()
            .filter_map(|s| rest.find(s).map(|i| (i, *s)))
            .min_by_key(|(i, s)| (*i, std::cmp::Reverse(s.len())))
        {
            Some((i, s)) => (&rest[..i], s, Some(&rest[i + s.len()..])),
            None => (rest, "", None),
        };
        match item.split_once('=') {
            Some((name, _)) => {
                let _ = write!(out, "{name}={HIDDEN}");
            }
            None => out.push_str(item),
        }
        out.push_str(sep);
        match next {
            Some(n) => rest = n,
            None => return out,
        }
    }
}

/// Where a URL's authority ends in text.
fn ends_authority(c: char) -> bool {
    c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '\\' | '`')
}

/// Where a query quoted in text ends: white space, a quote or bracket around it, or an
/// escape other than JSON's `\u0026` for `&`.
fn query_end(text: &str) -> usize {
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        if c == '\\' && text[i..].starts_with("\\u0026") {
            i += "\\u0026".len();
            continue;
        }
        if c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`' | '#' | ')' | ']') {
            break;
        }
        i += c.len_utf8();
    }
    i
}

#[cfg(test)]
mod tests {

    #[test]
    fn secrets_quoted_back_are_masked() {
        remember("postgres://wfm:S%40cret-pw-77@db:5432/acd");
        remember("Driver={x};Server=db;Uid=wfm;Pwd={kv-pass-4242};");
        remember("abc");
        let echoed = "login failed for wfm with S@cret-pw-77 (S%40cret-pw-77), kv-pass-4242; abc";
        assert_eq!(
            scrub(echoed),
            "login failed for wfm with *** (***), ***; abc",
            "too short a value is not remembered"
        );
    }

    use super::*;

    #[test]
    fn user_info_goes_query_values_are_hidden_names_stay() {
        let u = url::Url::parse(
            "https://ann:hunter2@acd.example:8443/calls?api_key=s3cr3t&since=1&tok#frag",
        )
        .unwrap();
        assert_eq!(
            url(&u),
            "https://acd.example:8443/calls?api_key=***&since=***&***#***"
        );
        let plain = url::Url::parse("https://acd.example/calls").unwrap();
        assert_eq!(url(&plain), "https://acd.example/calls");
        assert_eq!(
            url_text("https://u:pw@acd.example/calls?key={cursor}"),
            "https://acd.example/calls?key=***"
        );
    }

    #[test]
    fn a_url_that_does_not_parse_keeps_what_shows_the_mistake() {
        assert_eq!(
            url_text("http://ann:pw@[::1/v1?api_key=s3cr3t"),
            "http://[::1/v1?api_key=***"
        );
        assert_eq!(
            url_text("http://ann:p/w@host:x/v1?api_key=s3cr3t#t"),
            "http://host:x/v1?api_key=***#***"
        );
        assert_eq!(url_text("ann:pw@host/x?s3cr3t"), "host/x?***");
        assert_eq!(url_text("not a url"), "not a url");
    }

    #[test]
    fn text_that_quotes_a_url_or_a_request_loses_its_secrets() {
        assert_eq!(
            text(r#"{"error":"no route","request":"/calls?api_key=s3cr3t&since=2024"}"#),
            r#"{"error":"no route","request":"/calls?api_key=***&since=***"}"#
        );
        assert_eq!(
            text("GET https://ann:pw@acd.example/x?k=s3cr3t failed: why? because"),
            "GET https://acd.example/x?k=*** failed: why? because"
        );
        assert_eq!(
            text(r#""/calls?since=1\u0026api_key=s3cr3t""#),
            r#""/calls?since=***\u0026api_key=***""#
        );
        assert_eq!(
            text("<a href=\"/calls?a=1&amp;key=s3cr3t\">"),
            "<a href=\"/calls?a=***&amp;key=***\">"
        );
        assert_eq!(
            text(r#"{"next":"https:\/\/ann:pw@acd.example\/x?k=s3cr3t"}"#),
            r#"{"next":"https:\/\/acd.example\/x?k=***"}"#
        );
        assert_eq!(text("time: 10:00, ratio 3:1"), "time: 10:00, ratio 3:1");
    }

    #[test]
    fn headers_show_names_only() {
        assert_eq!(
            headers(&[("X-Api-Key".into(), "s3cr3t".into())]),
            "[X-Api-Key: ***]"
        );
    }
}
