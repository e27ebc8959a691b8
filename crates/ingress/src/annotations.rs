//! The Ingress annotations podwire honours, under ingress-nginx's names so
//! manifests written for it (and the courses that teach them) keep
//! working, and what a matched rule then does with a request (pure).
//!
//! - `use-regex: "true"`: the Ingress's paths are case-insensitive regular
//!   expressions matched at the start of the path (ingress-nginx's
//!   `location ~* "^path"`); `rewrite-target` implies it, as there.
//! - `rewrite-target`: the request path sent to the backend is the target,
//!   with `$1`.. replaced by the path's capture groups (nginx's `rewrite`:
//!   the whole path is replaced, so `/wear` with target `/` sends `/wear/x`
//!   as `/`); the query string is kept.
//! - `app-root`: `/` redirects (302) to this path.
//! - `ssl-redirect: "false"`: no redirect to HTTPS for TLS hosts;
//!   `force-ssl-redirect: "true"`: redirect to HTTPS even without TLS.
//! - `permanent-redirect` (+ `permanent-redirect-code`, default 301): every
//!   request answers with a redirect to that URL.
//!
//! Any other annotation under `nginx.ingress.kubernetes.io/` is reported
//! (in the plan, a log line and, in Kubernetes mode, an Event), never
//! silently ignored.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::Regex;

/// ingress-nginx's annotation prefix.
pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
/// podwire's own prefix (`podwire.io/ssl-redirect`).
pub const PODWIRE_PREFIX: &str = "podwire.io/";

/// The annotations (after the prefix) podwire implements.
pub const SUPPORTED: [&str; 7] = [
    "use-regex",
    "rewrite-target",
    "app-root",
    "ssl-redirect",
    "force-ssl-redirect",
    "permanent-redirect",
    "permanent-redirect-code",
];

/// What an Ingress's annotations ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    pub use_regex: bool,
    pub rewrite_target: Option<String>,
    pub app_root: Option<String>,
    /// `ssl-redirect: "false"` (None: not said).
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: bool,
    /// (status, location)
    pub permanent_redirect: Option<(u16, String)>,
    /// Annotations of the nginx prefix podwire does not implement, and
    /// values it cannot use, with why.
    pub unsupported: Vec<String>,
}

fn truthy(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

impl Annotations {
    /// Reads an Ingress's annotations.
    pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Annotations {
        let mut out = Annotations::default();
        let Some(all) = annotations else {
            return out;
        };
        let mut code = None;
        for (key, value) in all {
            let name = match (
                key.strip_prefix(NGINX_PREFIX),
                key.strip_prefix(PODWIRE_PREFIX),
            ) {
                (Some(n), _) => n,
                (None, Some("ssl-redirect")) => "ssl-redirect",
                _ => continue,
            };
            let bad = |out: &mut Annotations, why: &str| {
                out.unsupported
                    .push(format!("annotation {key}: {value:?} {why}: ignored"));
            };
            match name {
                "use-regex" => match truthy(value) {
                    Some(b) => out.use_regex = b,
                    None => bad(&mut out, "is not true or false"),
                },
                "rewrite-target" => out.rewrite_target = Some(value.clone()),
                "app-root" if value.starts_with('/') => out.app_root = Some(value.clone()),
                "app-root" => bad(&mut out, "must be a path starting with /"),
                "ssl-redirect" => match truthy(value) {
                    Some(b) => out.ssl_redirect = Some(b),
                    None => bad(&mut out, "is not true or false"),
                },
                "force-ssl-redirect" => match truthy(value) {
                    Some(b) => out.force_ssl_redirect = b,
                    None => bad(&mut out, "is not true or false"),
                },
                "permanent-redirect" => out.permanent_redirect = Some((301, value.clone())),
                "permanent-redirect-code" => match value.trim().parse::<u16>() {
                    Ok(c) if (300..400).contains(&c) => code = Some(c),
                    _ => bad(&mut out, "is not a 3xx status"),
                },
                other => out.unsupported.push(format!(
                    "annotation {NGINX_PREFIX}{other} is not supported by podwire (supported: {}): ignored",
                    SUPPORTED.join(", ")
                )),
            }
        }
        if let (Some(c), Some((status, _))) = (code, out.permanent_redirect.as_mut()) {
            *status = c;
        }
        out
    }

    /// Whether the paths are regular expressions.
    pub fn regex_paths(&self) -> bool {
        self.use_regex || self.rewrite_target.is_some()
    }

    /// The path as ingress-nginx matches a regex location: case
    /// insensitive, at the start of the request path.
    pub fn path_regex(path: &str) -> Result<Regex, String> {
        Regex::new(&format!("(?i)^{path}"))
            .map_err(|e| format!("is not a valid regular expression: {e}"))
    }
}

/// What a matched rule does besides choosing the backend.
#[derive(Debug, Clone, Default)]
pub struct RuleActions {
    /// A regex path (use-regex or rewrite-target).
    pub regex: Option<Regex>,
    pub rewrite_target: Option<Arc<str>>,
    pub app_root: Option<Arc<str>>,
    pub force_https: bool,
    pub permanent_redirect: Option<(u16, Arc<str>)>,
}

/// What to do with one request, once its rule is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Redirect {
        status: u16,
        location: String,
    },
    /// To the HTTPS port (the listener's 308).
    HttpsRedirect,
    /// Forward, with this path and query instead of the request's.
    Forward {
        rewritten: Option<String>,
    },
}

impl RuleActions {
    /// The action for `path` + `query` on a rule that redirects plain HTTP
    /// to HTTPS when `https_redirect`; `plain_http`: the request came
    /// without TLS to a controller that has an HTTPS port to send it to.
    pub fn decide(
        &self,
        path: &str,
        query: Option<&str>,
        https_redirect: bool,
        plain_http: bool,
    ) -> Action {
        if let Some((status, location)) = &self.permanent_redirect {
            return Action::Redirect {
                status: *status,
                location: location.to_string(),
            };
        }
        if plain_http && (https_redirect || self.force_https) {
            return Action::HttpsRedirect;
        }
        if let Some(root) = &self.app_root
            && path == "/"
        {
            return Action::Redirect {
                status: 302,
                location: root.to_string(),
            };
        }
        let rewritten = self.rewrite_target.as_ref().map(|target| {
            let mut out = String::new();
            match self.regex.as_ref().and_then(|r| r.captures(path)) {
                Some(caps) => caps.expand(target, &mut out),
                None => out.push_str(target),
            }
            if !out.starts_with('/') {
                out.insert(0, '/');
            }
            if let Some(q) = query.filter(|q| !q.is_empty()) {
                out.push(if out.contains('?') { '&' } else { '?' });
                out.push_str(q);
            }
            out
        });
        Action::Forward { rewritten }
    }

    /// A short description for the plan.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.regex.is_some() {
            parts.push("regex".to_string());
        }
        if let Some(t) = &self.rewrite_target {
            parts.push(format!("rewrite→{t}"));
        }
        if let Some(r) = &self.app_root {
            parts.push(format!("app-root {r}"));
        }
        if self.force_https {
            parts.push("force https".to_string());
        }
        if let Some((code, to)) = &self.permanent_redirect {
            parts.push(format!("{code}→{to}"));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Annotations::parse(Some(&map))
    }

    fn actions(a: &Annotations, path: &str) -> RuleActions {
        RuleActions {
            regex: a
                .regex_paths()
                .then(|| Annotations::path_regex(path).unwrap()),
            rewrite_target: a.rewrite_target.as_deref().map(Arc::from),
            app_root: a.app_root.as_deref().map(Arc::from),
            force_https: a.force_ssl_redirect,
            permanent_redirect: a
                .permanent_redirect
                .as_ref()
                .map(|(c, l)| (*c, Arc::from(l.as_str()))),
        }
    }

    #[test]
    fn rewrite_target_without_captures_replaces_the_whole_path() {
        // The course's case: /wear served by a backend that serves /.
        let a = annotations(&[("nginx.ingress.kubernetes.io/rewrite-target", "/")]);
        assert!(a.regex_paths(), "rewrite-target implies regex paths");
        let r = actions(&a, "/wear");
        assert_eq!(
            r.decide("/wear", None, false, true),
            Action::Forward {
                rewritten: Some("/".into())
            }
        );
        assert_eq!(
            r.decide("/wear/shirts", Some("size=m"), false, true),
            Action::Forward {
                rewritten: Some("/?size=m".into())
            }
        );
    }

    #[test]
    fn rewrite_target_with_capture_groups() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/use-regex", "true"),
            ("nginx.ingress.kubernetes.io/rewrite-target", "/$2"),
        ]);
        let r = actions(&a, "/something(/|$)(.*)");
        let go = |p: &str| match r.decide(p, None, false, true) {
            Action::Forward { rewritten } => rewritten,
            other => panic!("{other:?}"),
        };
        assert_eq!(go("/something").as_deref(), Some("/"));
        assert_eq!(go("/something/").as_deref(), Some("/"));
        assert_eq!(go("/something/new").as_deref(), Some("/new"));
        assert_eq!(
            go("/SOMETHING/new").as_deref(),
            Some("/new"),
            "case-insensitive"
        );
    }

    #[test]
    fn redirects_come_first_and_app_root_only_at_the_root() {
        let a = annotations(&[("nginx.ingress.kubernetes.io/app-root", "/app")]);
        let r = actions(&a, "/");
        assert_eq!(
            r.decide("/", None, false, true),
            Action::Redirect {
                status: 302,
                location: "/app".into()
            }
        );
        assert_eq!(
            r.decide("/x", None, false, true),
            Action::Forward { rewritten: None }
        );
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://example.org/new",
            ),
            ("nginx.ingress.kubernetes.io/permanent-redirect-code", "308"),
        ]);
        assert_eq!(
            actions(&a, "/").decide("/anything", None, true, true),
            Action::Redirect {
                status: 308,
                location: "https://example.org/new".into()
            }
        );
        let a = annotations(&[("nginx.ingress.kubernetes.io/force-ssl-redirect", "true")]);
        let r = actions(&a, "/");
        assert_eq!(r.decide("/", None, false, true), Action::HttpsRedirect);
        assert_eq!(
            r.decide("/", None, false, false),
            Action::Forward { rewritten: None },
            "already on TLS"
        );
    }

    #[test]
    fn unknown_and_bad_annotations_are_reported() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
            ("nginx.ingress.kubernetes.io/use-regex", "maybe"),
            ("podwire.io/ssl-redirect", "false"),
            ("kubernetes.io/ingress.class", "podwire"),
        ]);
        assert_eq!(a.ssl_redirect, Some(false));
        assert_eq!(a.unsupported.len(), 2, "{:?}", a.unsupported);
        assert!(
            a.unsupported
                .iter()
                .any(|n| n.contains("proxy-body-size is not supported"))
        );
        assert!(
            a.unsupported
                .iter()
                .any(|n| n.contains("\"maybe\" is not true or false"))
        );
    }
}
