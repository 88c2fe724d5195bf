//! Route classes: which ComfyUI routes need which role.

use http::Method;

use super::path::NormalizedPath;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Any authenticated user.
    User,
    /// Admins only: installs code, reads server internals or frees the GPU for everyone.
    Admin,
}

/// First segments of ComfyUI-Manager's routes (also under `/v2/` and `/api/`): they install code.
const MANAGER_ROOTS: &[&str] = &["manager", "customnode", "snapshot", "comfyui_manager", "externalmodel"];

/// Classifies a request by method, normalised path and query.
pub fn classify(method: &Method, path: &NormalizedPath, query: Option<&str>) -> RouteClass {
    let route = path.route();
    let segment = |i: usize| route.get(i).copied().unwrap_or("");
    let is = |i: usize, name: &str| segment(i).eq_ignore_ascii_case(name);
    let manager_root = |i: usize| MANAGER_ROOTS.iter().any(|root| is(i, root));
    let admin = manager_root(0)
        || (is(0, "v2") && manager_root(1))
        || is(0, "internal")
        || is(0, "free")
        || (is(0, "users") && method != Method::GET)
        || ((is(0, "userdata") || (is(0, "v2") && is(1, "userdata"))) && touches_manager_userdata(&route, query));
    if admin { RouteClass::Admin } else { RouteClass::User }
}

/// ComfyUI-Manager keeps its config (channel URLs, security level) in user data: writing it
/// leads to code execution (CVE-2025-67303), so any access to it is admin-only.
fn touches_manager_userdata(route: &[&str], query: Option<&str>) -> bool {
    let is_manager = |s: &str| {
        let mut s = s.trim_start_matches(['/', '.']).to_owned();
        for _ in 0..3 {
            s = percent_encoding::percent_decode_str(&s).decode_utf8_lossy().into_owned();
        }
        s.trim_start_matches(['/', '.']).to_lowercase().starts_with("comfyui-manager")
    };
    let in_path = route.iter().skip(1).any(|s| is_manager(s));
    let in_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| matches!(k.as_ref(), "dir" | "path" | "file") && is_manager(&v))
    });
    in_path || in_query
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::normalize;

    fn class(method: Method, p: &str) -> RouteClass {
        let (path, query) = p.split_once('?').map_or((p, None), |(a, b)| (a, Some(b)));
        classify(&method, &normalize(path).unwrap(), query)
    }

    #[test]
    fn manager_and_internal_routes_are_admin_only_in_every_spelling() {
        for p in [
            "/manager/reboot",
            "/api/manager/queue/install",
            "/customnode/install/git_url",
            "/api/v2/customnode/install/pip",
            "/snapshot/restore",
            "/comfyui_manager/comfyui_versions",
            "/internal/logs",
            "/api/%6Danager/reboot",
            "/Manager/reboot",
            "/x/../manager/reboot",
            "/free",
            "/api/free",
            "/externalmodel/getlist",
        ] {
            assert_eq!(class(Method::POST, p), RouteClass::Admin, "{p}");
        }
    }

    #[test]
    fn manager_config_in_userdata_is_admin_only() {
        for p in [
            "/userdata/ComfyUI-Manager%2Fconfig.ini",
            "/api/userdata/comfyui-manager%252Fconfig.ini",
            "/userdata/%2543omfyUI-Manager%252Fconfig.ini",
            "/userdata?dir=ComfyUI-Manager",
            "/api/v2/userdata?path=ComfyUI-Manager/",
        ] {
            assert_eq!(class(Method::POST, p), RouteClass::Admin, "{p}");
        }
        assert_eq!(class(Method::POST, "/userdata/workflows%2Fa.json"), RouteClass::User);
    }

    #[test]
    fn creating_comfyui_users_is_admin_only_but_listing_is_not() {
        assert_eq!(class(Method::POST, "/users"), RouteClass::Admin);
        assert_eq!(class(Method::GET, "/users"), RouteClass::User);
    }

    #[test]
    fn everyday_routes_are_for_users() {
        for p in [
            "/prompt",
            "/api/queue",
            "/view?filename=a.png",
            "/ws",
            "/",
            "/object_info",
            "/upload/image",
            "/v2/userdata",
        ] {
            assert_eq!(class(Method::GET, p), RouteClass::User, "{p}");
        }
    }
}
