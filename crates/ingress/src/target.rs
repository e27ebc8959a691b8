//! Which host a request is for, and whether its request line and Host
//! header are well formed (RFC 9112 §3.2, RFC 9110 §7.2). Checked before
//! routing, because routing on an ambiguous host is how one request gets
//! routed by the proxy as one site and read by the backend as another:
//! hyper accepts a second Host header and an authority-form target
//! (`GET v1`) on any method, so the checks are ours.

use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::http::uri::Scheme;
use hyper::{Method, Uri, Version};

/// Why a request is answered 400 without being routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid Host header {0:?}")]
    InvalidHost(String),
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("invalid authority {0:?} in the request target")]
    InvalidAuthority(String),
    #[error("request target scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("request target {0:?} is neither a path starting with / nor an absolute URI")]
    Target(String),
}

/// The host the request is for, as a header value to route by and to send
/// to the backend as `Host`: an absolute-form target's own authority (RFC
/// 9112 §3.2.2: the Host header is then ignored and replaced), else the one
/// Host header, else empty (HTTP/1.0 may omit it).
///
/// CONNECT is not checked here: it is the one method whose target is an
/// authority, and it is not tunnelled by this proxy anyway.
pub fn request_host(
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<HeaderValue, BadRequest> {
    let mut hosts = headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::DuplicateHost);
    }
    if let Some(value) = header
        && !valid_host(value.as_bytes())
    {
        return Err(BadRequest::InvalidHost(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    if *method == Method::CONNECT {
        return Ok(header
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("")));
    }
    let from_target = match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
                return Err(BadRequest::Scheme(scheme.to_string()));
            }
            let text = authority.as_str();
            // userinfo ("user@host") is deprecated for http and must not
            // reach a Host header.
            if !valid_host(text.as_bytes()) {
                return Err(BadRequest::InvalidAuthority(text.to_string()));
            }
            Some(
                HeaderValue::from_str(text)
                    .map_err(|_| BadRequest::InvalidAuthority(text.to_string()))?,
            )
        }
        // Authority-form ("GET v1", "GET a.example:80") is for CONNECT only.
        (None, Some(_)) => return Err(BadRequest::Target(uri.to_string())),
        _ => None,
    };
    let path = uri.path();
    let origin_form = path.starts_with('/');
    let asterisk_form = path == "*" && *method == Method::OPTIONS && from_target.is_none();
    if !origin_form && !asterisk_form {
        return Err(BadRequest::Target(uri.to_string()));
    }
    match (from_target, header) {
        (Some(target), _) => Ok(target),
        (None, Some(value)) => Ok(value.clone()),
        (None, None) if version == Version::HTTP_11 => Err(BadRequest::MissingHost),
        (None, None) => Ok(HeaderValue::from_static("")),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): an IP literal in brackets or a
/// reg-name (unreserved, percent-encoded and sub-delims characters), and a
/// port that is a number a TCP port can be (the grammar allows any digits,
/// or none; routing needs the name cleanly apart from a real port). An
/// empty value is valid: it is what a client sends for a URI without one.
fn valid_host(value: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ipv6 = std::str::from_utf8(literal)
            .ok()
            .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok());
        if ipv6.is_none() {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).is_ok_and(|t| t.parse::<u16>().is_ok())
    });
    port_ok && reg_name(name)
}

fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        let b = name[i];
        if b == b'%' {
            let hex = name.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
        if !allowed {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, target: &str, hosts: &[&str]) -> Result<String, BadRequest> {
        let uri: Uri = target.parse().expect("hyper parses it");
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(HOST, HeaderValue::from_str(h).expect("header value"));
        }
        request_host(&method, Version::HTTP_11, &uri, &headers)
            .map(|v| v.to_str().unwrap_or("?").to_string())
    }

    #[test]
    fn origin_form_uses_the_one_host_header() {
        assert_eq!(
            check(Method::GET, "/x?q", &["a.example"]).unwrap(),
            "a.example"
        );
        assert_eq!(
            check(Method::GET, "/", &["[::1]:8080"]).unwrap(),
            "[::1]:8080"
        );
        assert_eq!(check(Method::OPTIONS, "*", &["a"]).unwrap(), "a");
    }

    #[test]
    fn host_headers_must_be_one_and_valid() {
        assert_eq!(
            check(Method::GET, "/", &["a.example", "b.example"]),
            Err(BadRequest::DuplicateHost)
        );
        for bad in [
            "a b",
            "u@a.example",
            "a.example:x",
            "a:99999",
            "[::1",
            "[zz]",
            "a/b",
        ] {
            assert!(
                matches!(
                    check(Method::GET, "/", &[bad]),
                    Err(BadRequest::InvalidHost(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(check(Method::GET, "/", &[]), Err(BadRequest::MissingHost));
    }

    #[test]
    fn absolute_form_routes_by_its_own_authority() {
        assert_eq!(
            check(Method::GET, "http://a.example/x", &["b.example"]).unwrap(),
            "a.example"
        );
        assert_eq!(
            check(Method::GET, "https://a.example:8443", &[]).unwrap(),
            "a.example:8443"
        );
        assert!(matches!(
            check(Method::GET, "ftp://a.example/x", &["a.example"]),
            Err(BadRequest::Scheme(_))
        ));
        assert!(matches!(
            check(Method::GET, "http://u@a.example/x", &["a.example"]),
            Err(BadRequest::InvalidAuthority(_))
        ));
    }

    #[test]
    fn other_targets_are_rejected() {
        for target in ["v1", "a.example:80"] {
            assert!(
                matches!(
                    check(Method::GET, target, &["a"]),
                    Err(BadRequest::Target(_))
                ),
                "{target}"
            );
        }
        assert!(matches!(
            check(Method::GET, "*", &["a"]),
            Err(BadRequest::Target(_))
        ));
        // CONNECT keeps its authority-form target.
        assert_eq!(
            check(Method::CONNECT, "a.example:443", &["a"]).unwrap(),
            "a"
        );
    }
}
