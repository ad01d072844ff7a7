//! What may be shown of values that can hold a secret: a URL's password and query values
//! (`https://user:PW@host/calls?api_key=...`), a header's value, a body.
//!
//! Secrets proper (API keys, connection strings, tokens) are [`crate::types::Secret`] and
//! never print. These helpers are for values that are mostly harmless and sometimes hold a
//! secret inside: they keep what helps an operator (scheme, host, port, path, parameter and
//! header names) and hide the rest.

use std::fmt::Write;

/// `url` for messages and `Debug`: its password and the values of its query parameters
/// replaced by `***` (the user name and parameter names stay, to tell which is meant).
pub fn url(url: &url::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut hidden = u.query_pairs_mut();
        hidden.clear();
        for name in &names {
            hidden.append_pair(name, "***");
        }
    }
    u.to_string()
}

/// A URL template (with `{cursor}`-style placeholders, maybe not parseable as it is) for
/// `Debug`: as [`url`] once parsed, else only what comes before its query and user info.
pub fn url_text(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(u) => url(&u),
        Err(_) => {
            let before_query = text.split('?').next().unwrap_or_default();
            match before_query.split_once("://") {
                Some((scheme, rest)) => {
                    let host = rest.rsplit('@').next().unwrap_or(rest);
                    format!("{scheme}://{host}")
                }
                None => "***".into(),
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_query_values_are_hidden_names_stay() {
        let u =
            url::Url::parse("https://ann:hunter2@acd.example:8443/calls?api_key=s3cr3t&since=1")
                .unwrap();
        assert_eq!(
            url(&u),
            "https://ann:***@acd.example:8443/calls?api_key=***&since=***"
        );
        assert_eq!(
            url_text("https://u:pw@acd.example/calls?key={cursor}"),
            "https://u:***@acd.example/calls?key=***"
        );
        assert_eq!(url_text("not a url?key=s3cr3t"), "***");
        assert_eq!(
            headers(&[("X-Api-Key".into(), "s3cr3t".into())]),
            "[X-Api-Key: ***]"
        );
    }
}
