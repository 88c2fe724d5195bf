//! Route classes: which ComfyUI routes a normal user may reach. An allow-list, decided on the
//! fully resolved path: everything not named here is for admins, so a route a new ComfyUI
//! release (or a custom node) adds is closed until someone opens it.

use std::borrow::Cow;

use http::Method;

use super::names::{NameError, resolve_relative};
use super::path::NormalizedPath;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Any authenticated user; a top-level navigation from another site may load it (the app's
    /// page and its static files).
    Page,
    /// Any authenticated user, from the gateway's own origin only.
    User,
    /// Admins only: installs code, reads server internals, frees the GPU for everyone, or is
    /// not on the allow-list.
    Admin,
    /// A file name in the path or query that ComfyUI would refuse or resolve outside its
    /// folder: a 400 for everyone, never forwarded.
    BadName(NameError),
}

/// Where a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// ComfyUI's API: served as `/x` and as `/api/x`.
    Api,
    /// The frontend's static files: only `/x`, and a navigation from another site may load them.
    Static,
}

use Form::{Api, Static};

/// What a normal user may reach. `GET` includes `HEAD`. `{name}` is one segment, `**` any
/// rest; `{file}` and `{dest}` are file names that ComfyUI resolves inside the user's folder.
#[rustfmt::skip]
const USER_ROUTES: &[(&str, &str, Form)] = &[
    // methods            path                                        form
    ("GET",               "/",                                        Static),
    ("GET",               "/assets/**",                               Static),
    ("GET",               "/extensions/**",                           Static),
    ("GET",               "/templates/**",                            Static),
    ("GET",               "/scripts/**",                              Static),
    ("GET",               "/fonts/**",                                Static),
    ("GET",               "/cursor/**",                               Static),
    ("GET",               "/docs/**",                                 Static),
    ("GET",               "/user.css",                                Static),
    ("GET",               "/materialdesignicons.min.css",             Static),
    ("GET",               "/favicon.ico",                             Static),
    ("GET",               "/ws",                                      Api),
    ("GET",               "/i18n",                                    Api),
    ("GET",               "/workflow_templates",                      Api),
    ("GET",               "/embeddings",                              Api),
    ("GET",               "/extensions",                              Api),
    ("GET",               "/features",                                Api),
    ("GET",               "/system_stats",                            Api),
    ("GET",               "/object_info",                             Api),
    ("GET",               "/object_info/{class}",                     Api),
    ("GET",               "/models",                                  Api),
    ("GET",               "/models/{folder}",                         Api),
    ("GET",               "/experiment/models",                       Api),
    ("GET",               "/experiment/models/{folder}",              Api),
    ("GET",               "/experiment/models/preview/{folder}/{index}/{file}", Api),
    ("GET",               "/view_metadata/{folder}",                  Api),
    ("GET POST",          "/settings",                                Api),
    ("GET POST",          "/settings/{id}",                           Api),
    ("GET",               "/users",                                   Api),
    ("GET",               "/userdata",                                Api),
    ("GET POST DELETE",   "/userdata/{file}",                         Api),
    ("POST",              "/userdata/{file}/move/{dest}",             Api),
    ("GET",               "/v2/userdata",                             Api),
    ("GET POST",          "/prompt",                                  Api),
    ("GET POST",          "/queue",                                   Api),
    ("GET POST",          "/history",                                 Api),
    ("GET",               "/history/{id}",                            Api),
    ("GET",               "/jobs",                                    Api),
    ("GET",               "/jobs/{id}",                               Api),
    ("POST",              "/interrupt",                               Api),
    ("GET",               "/view",                                    Api),
    ("POST",              "/upload/image",                            Api),
    ("POST",              "/upload/mask",                             Api),
];

/// Query parameters of the user-data routes that name files.
const NAME_PARAMETERS: &[&str] = &["dir", "path", "file"];

/// ComfyUI-Manager keeps its config (channel URLs, security level) and start-up scripts in user
/// data: writing them leads to code execution (CVE-2025-67303), so any access is admin-only.
const MANAGER_FOLDER: &str = "comfyui-manager";

/// Why a configured route cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{route}`: {problem}")]
pub struct RouteError {
    route: String,
    problem: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// One segment, anything.
    Any,
    /// One segment holding a file name.
    Name,
    /// Any number of segments (last only).
    Rest,
}

#[derive(Debug, Clone)]
struct Rule {
    methods: Vec<Method>,
    segments: Vec<Segment>,
    form: Form,
}

impl Rule {
    fn parse(methods: &str, path: &str, form: Form) -> Result<Rule, &'static str> {
        let methods = methods
            .split([' ', ','])
            .filter(|m| !m.is_empty())
            .map(|m| match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => Ok(method),
                _ => Err("methods are upper-case HTTP methods such as GET or POST"),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if methods.is_empty() {
            return Err("name the methods, e.g. \"GET /api/jobs\"");
        }
        let rest = path.strip_prefix('/').ok_or("the path must start with '/'")?;
        // `/api/x` and `/x` are one ComfyUI route.
        let rest = if form == Api { rest.strip_prefix("api/").unwrap_or(rest) } else { rest };
        let raw: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            segments.push(match *s {
                "**" if i + 1 == raw.len() => Segment::Rest,
                "**" => return Err("`**` may only end the path"),
                "{file}" | "{dest}" => Segment::Name,
                s if s.starts_with('{') && s.ends_with('}') => Segment::Any,
                "." | ".." => return Err("dot segments are not allowed"),
                s if s.contains(['{', '}', '*', '%', '?', '\\']) => {
                    return Err("segments are plain names, `{name}` or a final `**`");
                }
                s => Segment::Literal(s.to_owned()),
            });
        }
        Ok(Rule { methods, segments, form })
    }

    /// Whether `route` (without the `/api` prefix, which `api` says was there) has this shape.
    fn matches_path(&self, api: bool, route: &[&str]) -> bool {
        if api && self.form == Static {
            return false;
        }
        let mut route = route.iter();
        for segment in &self.segments {
            match (segment, route.next()) {
                (Segment::Rest, _) => return true,
                (Segment::Literal(name), Some(s)) if name == s => {}
                (Segment::Any | Segment::Name, Some(_)) => {}
                _ => return false,
            }
        }
        route.next().is_none()
    }
}

/// The allow-list in force: the built-in [`USER_ROUTES`] plus `[policy] user_routes`. Built
/// once at start.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    rules: Vec<Rule>,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        let rules = USER_ROUTES.iter().filter_map(|(m, p, form)| Rule::parse(m, p, *form).ok()).collect();
        Self { rules }
    }
}

impl RoutePolicy {
    /// The built-in allow-list widened by `extra` routes (`"GET /api/jobs"`, `"POST /my/**"`),
    /// which ComfyUI serves as `/x` and `/api/x` alike.
    pub fn with_user_routes(extra: &[String]) -> Result<Self, RouteError> {
        let mut policy = Self::default();
        for route in extra {
            policy.rules.push(parse_user_route(route)?);
        }
        Ok(policy)
    }

    /// Classifies a request by method, normalised path and query.
    pub fn classify(&self, method: &Method, path: &NormalizedPath, query: Option<&str>) -> RouteClass {
        let segments = path.segments();
        let (api, route) = match segments.split_first() {
            Some((&"api", rest)) => (true, rest),
            _ => (false, segments.as_slice()),
        };
        let method = if method == Method::HEAD { &Method::GET } else { method };
        let shaped = || self.rules.iter().filter(|rule| rule.matches_path(api, route));
        // Names first: whoever asks, ComfyUI must never see a name that escapes its folder.
        let in_path = shaped().next().into_iter().flat_map(|rule| {
            rule.segments.iter().zip(route).filter(|(s, _)| **s == Segment::Name).map(|(_, raw)| Cow::Borrowed(*raw))
        });
        let in_query = query
            .filter(|_| is_user_data(route))
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .filter(|(key, _)| NAME_PARAMETERS.contains(&key.as_ref()))
            .map(|(_, value)| value);
        let mut touches_manager = false;
        for name in in_path.chain(in_query) {
            match resolved_is_manager(&name) {
                Ok(manager) => touches_manager |= manager,
                Err(e) => return RouteClass::BadName(e),
            }
        }
        if touches_manager {
            return RouteClass::Admin;
        }
        match shaped().find(|rule| rule.methods.contains(method)) {
            Some(rule) if rule.form == Static => RouteClass::Page,
            Some(_) => RouteClass::User,
            None => RouteClass::Admin,
        }
    }
}

/// Parses one `[policy] user_routes` entry: methods, then the path.
fn parse_user_route(route: &str) -> Result<Rule, RouteError> {
    let error = |problem| RouteError { route: route.to_owned(), problem };
    let (methods, path) = route.trim().rsplit_once([' ', '\t']).ok_or_else(|| error("write \"METHOD /path\""))?;
    Rule::parse(methods, path, Api).map_err(error)
}

/// `/userdata...` and `/v2/userdata...`, where the query names files too.
fn is_user_data(route: &[&str]) -> bool {
    matches!(route, ["userdata", ..] | ["v2", "userdata", ..])
}

/// Resolves a user-data name as ComfyUI does and says whether it lies in ComfyUI-Manager's folder.
fn resolved_is_manager(raw: &str) -> Result<bool, NameError> {
    let resolved = resolve_relative(raw, true)?;
    let first = resolved.split('/').next().unwrap_or("");
    Ok(first.get(..MANAGER_FOLDER.len()).is_some_and(|p| p.eq_ignore_ascii_case(MANAGER_FOLDER)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::normalize;
    use RouteClass::{Admin, BadName, Page, User};

    fn class_with(policy: &RoutePolicy, method: &str, p: &str) -> RouteClass {
        let (path, query) = p.split_once('?').map_or((p, None), |(a, b)| (a, Some(b)));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        policy.classify(&method, &normalize(path).unwrap(), query)
    }

    fn class(method: &str, p: &str) -> RouteClass {
        class_with(&RoutePolicy::default(), method, p)
    }

    #[test]
    fn every_built_in_route_parses() {
        assert_eq!(RoutePolicy::default().rules.len(), USER_ROUTES.len());
    }

    #[test]
    fn hostile_spellings_resolve_to_the_route_comfyui_would_serve() {
        let bad = BadName(NameError::Escapes);
        #[rustfmt::skip]
        let cases: &[(&str, &str, RouteClass)] = &[
            // ComfyUI-Manager, every spelling
            ("GET", "/manager/reboot", Admin),
            ("HEAD", "/manager/reboot", Admin),
            ("POST", "/api/manager/queue/install", Admin),
            ("GET", "/MANAGER/reboot", Admin),
            ("GET", "/Api/manager/reboot", Admin),
            ("GET", "/API/prompt", Admin),
            ("GET", "/api/%6Danager/reboot", Admin),
            ("GET", "/x/../manager/reboot", Admin),
            ("GET", "/x/%2e%2e/manager/reboot", Admin),
            ("GET", "/x/.%2e/manager/reboot", Admin),
            ("GET", "/x/%2E%2E/manager/reboot", Admin),
            ("GET", "//manager//reboot", Admin),
            ("GET", "/./manager/./reboot", Admin),
            ("GET", "/manager/reboot/", Admin),
            ("GET", "/prompt/../manager/reboot", Admin),
            ("GET", "/extensions/../manager/reboot", Admin),
            ("GET", "/extensions/%2e%2e/manager/reboot", Admin),
            ("POST", "/customnode/install/git_url", Admin),
            ("POST", "/api/customnode/install/pip", Admin),
            ("POST", "/v2/customnode/install/pip", Admin),
            ("POST", "/api/v2/customnode/install/pip", Admin),
            ("GET", "/api/v2/manager/queue/status", Admin),
            ("POST", "/snapshot/restore", Admin),
            ("GET", "/api/snapshot/restore", Admin),
            ("GET", "/v2/snapshot/getlist", Admin),
            ("GET", "/comfyui_manager/comfyui_versions", Admin),
            ("GET", "/externalmodel/getlist", Admin),
            ("GET", "/api/externalmodel/getlist", Admin),
            // Server internals and other admin routes
            ("GET", "/internal/logs", Admin),
            ("GET", "/internal/folder_paths", Admin),
            ("GET", "/api/internal/logs", Admin),
            ("PATCH", "/internal/logs/subscribe", Admin),
            ("POST", "/free", Admin),
            ("POST", "/api/free", Admin),
            ("POST", "/users", Admin),
            ("POST", "/api/users", Admin),
            // Unknown routes are closed by default
            ("POST", "/api/jobs/cancel", Admin),
            ("GET", "/api/assets", Admin),
            ("GET", "/global_subgraphs", Admin),
            ("POST", "/credentials", Admin),
            ("GET", "/api/assets/x.js", Admin),
            ("GET", "/api/", Admin),
            ("GET", "/Prompt", Admin),
            ("PUT", "/prompt", Admin),
            ("DELETE", "/queue", Admin),
            ("GET", "/interrupt", Admin),
            ("GET", "/upload/image", Admin),
            ("GET", "/userdata/a.json/move/b.json", Admin),
            // User data in ComfyUI-Manager's folder
            ("GET", "/userdata/ComfyUI-Manager%2Fconfig.ini", Admin),
            ("POST", "/api/userdata/comfyui-manager%252Fconfig.ini", Admin),
            ("POST", "/userdata/%2543omfyUI-Manager%252Fconfig.ini", Admin),
            ("POST", "/userdata/workflows%2F..%2FComfyUI-Manager%2Fstartup-scripts%2Finstall-scripts.txt", Admin),
            ("POST", "/userdata/workflows%252F..%252FComfyUI-Manager%252Fconfig.ini", Admin),
            ("POST", "/userdata/.%2FCOMFYUI-MANAGER%2Fconfig.ini", Admin),
            ("POST", "/userdata/workflows%2F%2E%2E%2Fcomfyui-manager%2Fconfig.ini", Admin),
            ("HEAD", "/api/userdata/ComfyUI-Manager%2Fconfig.ini", Admin),
            ("DELETE", "/userdata/x%2F..%2FComfyUI-Manager", Admin),
            ("POST", "/userdata/workflows%2Fa.json/move/workflows%2F..%2FComfyUI-Manager%2Fconfig.ini", Admin),
            ("POST", "/api/userdata/a.json/move/ComfyUI-Manager%2Fstartup-scripts%2Fx.txt", Admin),
            ("POST", "/userdata/ComfyUI-Manager%2Fconfig.ini/move/a.ini", Admin),
            ("GET", "/userdata?dir=ComfyUI-Manager", Admin),
            ("GET", "/userdata?dir=workflows/../ComfyUI-Manager", Admin),
            ("GET", "/userdata?dir=workflows%2F..%2FComfyUI-Manager", Admin),
            ("GET", "/api/userdata?dir=./comfyui-manager/&recurse=true", Admin),
            ("GET", "/api/v2/userdata?path=ComfyUI-Manager/", Admin),
            ("GET", "/v2/userdata?path=workflows/../ComfyUI-Manager", Admin),
            ("GET", "/v2/userdata?path=workflows%252F..%252FComfyUI-Manager", Admin),
            ("GET", "/userdata?file=ComfyUI-Manager/config.ini", Admin),
            // Names that ComfyUI would resolve outside the user's folder
            ("POST", "/userdata/..%2F..%2Fcomfy.settings.json", bad),
            ("POST", "/userdata/workflows%2F..%2F..%2Fx", bad),
            ("POST", "/userdata/workflows%252F..%252F..%252Fx", bad),
            ("POST", "/userdata/%2Fetc%2Fpasswd", bad),
            ("POST", "/userdata/a.json/move/..%2F..%2Fx", bad),
            ("GET", "/userdata?dir=../other-user", bad),
            ("GET", "/userdata?dir=%2e%2e/x", bad),
            ("GET", "/v2/userdata?path=/etc", bad),
            ("GET", "/userdata/a%2500b", BadName(NameError::InvalidCharacters)),
            ("GET", "/experiment/models/preview/loras/0/..%2F..%2Fsecret", bad),
            // What users do every day
            ("GET", "/", Page),
            ("HEAD", "/", Page),
            ("GET", "/assets/index-abc.js", Page),
            ("GET", "/extensions/core/clipspace.js", Page),
            ("GET", "/templates/default.json", Page),
            ("GET", "/favicon.ico", Page),
            ("GET", "/user.css", Page),
            ("GET", "/api/extensions", User),
            ("GET", "/extensions", Page),
            ("GET", "/api/i18n", User),
            ("GET", "/api/prompt", User),
            ("POST", "/prompt", User),
            ("POST", "/prompt/", User),
            ("HEAD", "/api/queue", User),
            ("POST", "/api/queue", User),
            ("GET", "/api/history/abc", User),
            ("GET", "/api/jobs", User),
            ("HEAD", "/api/jobs", User),
            ("GET", "/api/jobs/", User),
            ("GET", "/api//jobs", User),
            ("GET", "/api/jobs/abc", User),
            ("GET", "/api/jobs/a%2Fb", User),
            ("GET", "/api/api/jobs", Admin),
            ("GET", "/API/jobs", Admin),
            ("GET", "/api/Jobs", Admin),
            ("POST", "/api/jobs", Admin),
            ("DELETE", "/api/jobs/abc", Admin),
            ("GET", "/api/jobs/abc/x", Admin),
            ("GET", "/api/jobs/../queue", User),
            ("GET", "/api/jobs/%2e%2e/manager/reboot", Admin),
            ("POST", "/api/interrupt", User),
            ("GET", "/view?filename=a.png&dir=../x", User),
            ("POST", "/api/upload/mask", User),
            ("GET", "/ws", User),
            ("GET", "/api/models/loras", User),
            ("GET", "/api/experiment/models/checkpoints", User),
            ("GET", "/api/view_metadata/loras?filename=a.safetensors", User),
            ("POST", "/api/settings/Comfy.Theme", User),
            ("GET", "/api/users", User),
            ("GET", "/api/userdata?dir=workflows&recurse=true", User),
            ("GET", "/api/v2/userdata?path=workflows", User),
            ("POST", "/userdata/workflows%2Fa.json", User),
            ("POST", "/userdata/workflows%2Fsub%2F..%2Fa.json", User),
            ("DELETE", "/api/userdata/workflows%2Fa.json", User),
            ("POST", "/userdata/workflows%2Fa.json/move/workflows%2Fb.json", User),
            ("POST", "/userdata/my-ComfyUI-Manager-notes.json", User),
        ];
        assert!(cases.len() >= 60);
        for (method, p, expected) in cases {
            assert_eq!(class(method, p), *expected, "{method} {p}");
        }
    }

    #[test]
    fn configured_user_routes_widen_the_allow_list_in_both_forms() {
        let policy =
            RoutePolicy::with_user_routes(&["GET /api/widgets".to_owned(), "POST /my/custom/**".to_owned()]).unwrap();
        assert_eq!(class_with(&policy, "GET", "/api/widgets"), User);
        assert_eq!(class_with(&policy, "HEAD", "/widgets"), User);
        assert_eq!(class_with(&policy, "POST", "/api/widgets"), Admin);
        assert_eq!(class_with(&policy, "GET", "/api/widgets/abc"), Admin);
        assert_eq!(class_with(&policy, "POST", "/my/custom/a/b"), User);
        assert_eq!(class_with(&policy, "POST", "/api/my/custom"), User);
        assert_eq!(class_with(&policy, "GET", "/my/custom/a"), Admin);
        assert_eq!(class_with(&policy, "GET", "/manager/reboot"), Admin);
    }

    #[test]
    fn malformed_user_routes_are_refused() {
        for route in ["/api/jobs", "get /api/jobs", "GET api/jobs", "GET /a/**/b", "GET /a/../b", "GET /a%2Fb", ""] {
            assert!(RoutePolicy::with_user_routes(&[route.to_owned()]).is_err(), "{route:?}");
        }
        assert!(RoutePolicy::with_user_routes(&["GET,POST /x/{id}".to_owned()]).is_ok());
    }
}
