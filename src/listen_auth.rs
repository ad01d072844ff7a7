//! What the listener checks about a push before it keeps it, as pure functions: who sent it
//! (the peer, or behind `[listen] trusted_proxies` the address they forward), and whether its
//! HMAC signature (`signature = "hmac-sha256"`) and signed timestamp hold. Comparisons of
//! secrets are constant-time (aws-lc's).

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::config::Signature;
use crate::types::Secret;

/// Which header trusted proxies name the client in (`[listen] forwarded_header`). Only that
/// one is read: a proxy that sets one passes the other through as the client wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, IIS ARR, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=`.
    Forwarded,
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the last address
/// in the forwarded header that is not a trusted proxy itself, read from the right (a client
/// can write anything to the left of what its proxy adds). IPv4 addresses seen as IPv6
/// (`::ffff:a.b.c.d` on a `[::]` listener) are taken as IPv4.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<Option<IpAddr>> = match header {
        ForwardedHeader::Forwarded => forwarded(headers),
        ForwardedHeader::XForwardedFor => headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| parse_node(s.trim()))
            .collect(),
    };
    let mut client = peer;
    for node in chain.iter().rev() {
        // An entry that is not an address ("unknown", a mangled one) ends the trust: the
        // proxy before it is the client as far as anyone can tell.
        let Some(ip) = node else { break };
        let ip = ip.to_canonical();
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The `for=` nodes of `Forwarded` headers (RFC 7239), in order.
fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:443`, `[2001:db8::1]:443`,
/// `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

/// Why a push's signature is refused (answered 401, nothing kept).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No signature, or one that does not match.
    Signature(String),
    /// A signed timestamp missing, unreadable or too far from now (a replay).
    Timestamp(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Signature(s) | Refused::Timestamp(s) => f.write_str(s),
        }
    }
}

/// Checks `body`'s signature; `now` in unix seconds.
pub fn verify(
    sig: &Signature,
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    use aws_lc_rs::hmac;
    let given = headers
        .get(sig.header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Refused::Signature(format!("no {} header: sign each push", sig.header)))?;
    let given = decode(given).ok_or_else(|| {
        Refused::Signature(format!(
            "the {} header is not an HMAC-SHA256 in hex (optionally after sha256=) or base64",
            sig.header
        ))
    })?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    if let Some(ts_header) = &sig.timestamp_header {
        let raw = headers
            .get(ts_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Refused::Timestamp(format!("no {ts_header} header: the signed time is needed"))
            })?;
        let at = timestamp(raw).ok_or_else(|| {
            Refused::Timestamp(format!(
                "the {ts_header} header is not a time (Unix seconds or RFC 3339)"
            ))
        })?;
        let age = now.abs_diff(at);
        if age > sig.max_age.as_secs() {
            return Err(Refused::Timestamp(format!(
                "the signed time is {age} s from now, more than signature_max_age ({} s): a \
                 replay, or a clock that is off",
                sig.max_age.as_secs()
            )));
        }
        ctx.update(raw.as_bytes());
        ctx.update(b".");
    }
    ctx.update(body);
    let want = ctx.sign();
    aws_lc_rs::constant_time::verify_slices_are_equal(want.as_ref(), &given)
        .map_err(|_| Refused::Signature("the signature does not match the body".into()))
}

/// A signature as senders write it: hex (any case, optionally after `sha256=` in any case) or
/// base64 (standard or URL-safe, padded or not).
fn decode(v: &str) -> Option<Vec<u8>> {
    let v = match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256=") => &v[7..],
        _ => v,
    };
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&v[i..i + 2], 16).ok())
            .collect();
    }
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(v).ok())
        .filter(|b| b.len() == 32)
}

/// Unix seconds (milliseconds when it has 13 digits or more) or an RFC 3339 time.
fn timestamp(raw: &str) -> Option<i64> {
    if let Ok(n) = raw.parse::<i64>() {
        return Some(if n >= 1_000_000_000_000 { n / 1000 } else { n });
    }
    raw.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = [net("10.0.0.0/24")];
        let xff = ForwardedHeader::XForwardedFor;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        // From a trusted proxy: the right-most untrusted address.
        assert_eq!(client_ip(proxy, &h, &trusted, xff), ip("203.0.113.7"));
        // From anyone else: the header is ignored.
        let other = ip("198.51.100.1");
        assert_eq!(client_ip(other, &h, &trusted, xff), other);
        // Only the header chosen is read: a Forwarded the proxy passed through is not.
        let h = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\", for=10.0.0.9;proto=https",
            ),
            ("x-forwarded-for", "203.0.113.8"),
        ]);
        assert_eq!(client_ip(proxy, &h, &trusted, xff), ip("203.0.113.8"));
        assert_eq!(
            client_ip(proxy, &h, &trusted, ForwardedHeader::Forwarded),
            ip("2001:db8::1")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted, xff), proxy);
        // An entry that is no address stops the walk at the proxy that wrote it.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, unknown, 10.0.0.8")]);
        assert_eq!(client_ip(proxy, &h, &trusted, xff), ip("10.0.0.8"));
        // IPv4 seen through an IPv6 socket is IPv4.
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.9")]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.5"), &h, &trusted, xff),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("::ffff:192.0.2.1"), &h, &[], xff),
            ip("192.0.2.1")
        );
    }

    fn sig(ts: Option<&str>) -> Signature {
        Signature {
            header: "X-Signature".into(),
            secret: crate::config::SourceSecret {
                key: "source.x.signature_secret".into(),
                from: crate::config::TokenSource::Inline(Secret::new("s3cret")),
            },
            timestamp_header: ts.map(str::to_owned),
            max_age: std::time::Duration::from_secs(300),
        }
    }

    fn hmac_hex(data: &[u8]) -> String {
        use aws_lc_rs::hmac;
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        hmac::sign(&key, data)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_signature_is_checked_in_hex_or_base64_and_with_its_time() {
        let secret = Secret::new("s3cret");
        let body = br#"{"a":1}"#;
        let good = hmac_hex(body);
        let ok = |h: &HeaderMap| verify(&sig(None), &secret, h, body, 1_000);
        assert_eq!(ok(&headers(&[("x-signature", &good)])), Ok(()));
        assert_eq!(
            ok(&headers(&[(
                "x-signature",
                &format!("sha256={}", good.to_uppercase())
            )])),
            Ok(())
        );
        let bytes: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&good[i..i + 2], 16).unwrap())
            .collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(ok(&headers(&[("x-signature", &b64)])), Ok(()));
        let url_nopad = b64
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_owned();
        assert_eq!(ok(&headers(&[("x-signature", &url_nopad)])), Ok(()));
        assert_eq!(
            ok(&headers(&[("x-signature", &format!("Sha256={good}"))])),
            Ok(())
        );
        // A time far out of range is refused, not a panic.
        let s = sig(Some("X-Timestamp"));
        let h = headers(&[
            ("x-signature", &good),
            ("x-timestamp", "-9223372036854775807"),
        ]);
        assert!(matches!(
            verify(&s, &secret, &h, body, 1_000),
            Err(Refused::Timestamp(_))
        ));
        assert!(matches!(ok(&HeaderMap::new()), Err(Refused::Signature(_))));
        let bad = hmac_hex(b"other body");
        assert!(matches!(
            ok(&headers(&[("x-signature", &bad)])),
            Err(Refused::Signature(_))
        ));
        // With a timestamp: TIMESTAMP.BODY is signed, and its age is checked.
        let s = sig(Some("X-Timestamp"));
        let signed = hmac_hex(b"1000.{\"a\":1}");
        let h = headers(&[("x-signature", &signed), ("x-timestamp", "1000")]);
        assert_eq!(verify(&s, &secret, &h, body, 1_100), Ok(()));
        assert!(matches!(
            verify(&s, &secret, &h, body, 1_400),
            Err(Refused::Timestamp(_))
        ));
        let h = headers(&[("x-signature", &signed)]);
        assert!(matches!(
            verify(&s, &secret, &h, body, 1_000),
            Err(Refused::Timestamp(_))
        ));
        // The time is part of what is signed: another time, the same signature, refused.
        let h = headers(&[("x-signature", &signed), ("x-timestamp", "1001")]);
        assert!(matches!(
            verify(&s, &secret, &h, body, 1_000),
            Err(Refused::Signature(_))
        ));
    }
}
