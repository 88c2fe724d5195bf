#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A backend's answer is relayed on the gateway's terms, and a client's failure is never the
//! backend's: the real gateway in front of a small hostile backend.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::Response;
use common::{Auth, Gateway, Options, client, raw_request};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const STATS: &str = include_str!("../sim/fixtures/system_stats.json");
const OBJECT_INFO: &str = include_str!("../sim/fixtures/object_info.json");

/// A backend that stays healthy (`/system_stats`, `/object_info`) and answers everything else
/// with what a malicious custom node might send: the gateway's cookies, redirects off-site,
/// `Cache-Control: public`. POSTs read their body first. Returns its URL.
async fn hostile_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let authority = authority.clone();
        async move { hostile_answer(&authority, req).await }
    });
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn hostile_answer(authority: &str, req: Request<Body>) -> Response {
    let path = req.uri().path().to_owned();
    let path = path.strip_prefix("/api").unwrap_or(&path);
    match path {
        "/system_stats" => return json_response(STATS),
        "/object_info" => return json_response(OBJECT_INFO),
        "/node_ws" => return echo_socket(req).await,
        _ => {}
    }
    if req.method() == axum::http::Method::POST {
        let _ = axum::body::to_bytes(req.into_body(), usize::MAX).await;
        return Response::new(Body::from("ok"));
    }
    let mut response = Response::new(Body::from("hostile"));
    let location = match path {
        "/redirect/scheme-relative" => Some("//evil.example/".to_owned()),
        "/redirect/off-site" => Some("http://EVIL.example/x".to_owned()),
        "/redirect/backend" => Some(format!("http://{authority}/x?y=1")),
        "/redirect/relative" => Some("/relative".to_owned()),
        _ => None,
    };
    if let Some(location) = location {
        *response.status_mut() = StatusCode::FOUND;
        response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
    }
    let h = response.headers_mut();
    for cookie in [
        "comfygate_session=planted; Path=/",
        "__Host-comfygate_session=planted; Path=/; Secure",
        "comfygate_login_csrf=fixed; Path=/login",
        "=comfygate_session=planted",
        "theme=dark; Path=/",
    ] {
        h.append(header::SET_COOKIE, HeaderValue::from_static(cookie));
    }
    if path == "/no-store" {
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("public, no-store"));
    } else {
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("PUBLIC, max-age=60"));
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("s-maxage=600"));
    }
    h.append(header::VARY, HeaderValue::from_static("Accept-Encoding, cookie"));
    response
}

/// A custom node's WebSocket: echoes text, and its handshake tries to plant a session.
async fn echo_socket(req: Request<Body>) -> Response {
    use axum::extract::FromRequestParts;
    use axum::extract::ws::{Message, WebSocketUpgrade};
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &()).await.unwrap();
    let mut response = upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(Message::Text(text))) = socket.recv().await {
            if socket.send(Message::Text(text)).await.is_err() {
                return;
            }
        }
    });
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, HeaderValue::from_static("comfygate_session=planted; Path=/"));
    h.append(header::SET_COOKIE, HeaderValue::from_static("node=1"));
    response
}

fn json_response(body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A gateway in front of `backend` and an admin token for it (an admin's requests all forward).
async fn gateway(backend: &str) -> (Gateway, String) {
    let gw = Gateway::start_with(backend, Options::default()).await;
    let token = gw.token("admin", "t").await;
    (gw, token)
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

fn all(response: &reqwest::Response, name: header::HeaderName) -> Vec<String> {
    response.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_backend_cannot_set_the_gateways_cookies_or_make_answers_public() {
    let (gw, token) = gateway(&hostile_backend().await).await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/custom_node/route"),
        (reqwest::Method::HEAD, "/api/custom_node/route"),
        (reqwest::Method::GET, "/view?filename=x.png&type=output"),
        (reqwest::Method::HEAD, "/view?filename=x.png&type=output"),
    ] {
        let r = client().request(method.clone(), gw.at(path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
        assert_eq!(set_cookies(&r), ["theme=dark; Path=/"], "{method} {path}");
        assert_eq!(all(&r, header::CACHE_CONTROL), ["private, max-age=60, s-maxage=600"], "{method} {path}");
        assert_eq!(all(&r, header::VARY), ["Accept-Encoding, cookie, Authorization"], "{method} {path}");
    }
    let r = client().get(gw.at("/api/no-store")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(all(&r, header::CACHE_CONTROL), ["no-store"]);
}

#[tokio::test]
async fn a_backend_redirect_leads_back_to_the_gateway_or_is_refused() {
    let (gw, token) = gateway(&hostile_backend().await).await;
    for (path, expected) in [("/api/redirect/backend", "/x?y=1"), ("/api/redirect/relative", "/relative")] {
        let r = client().get(gw.at(path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 302, "{path}");
        assert_eq!(all(&r, header::LOCATION), [expected], "{path}");
    }
    for path in ["/api/redirect/scheme-relative", "/api/redirect/off-site"] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = client().request(method.clone(), gw.at(path)).bearer_auth(&token).send().await.unwrap();
            assert_eq!(r.status(), 502, "{method} {path}");
            assert!(r.headers().get(header::LOCATION).is_none(), "{method} {path}");
            assert!(set_cookies(&r).is_empty(), "{method} {path}");
            if method == reqwest::Method::GET {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["code"], "backend_unavailable", "{body}");
                assert!(body["error"].as_str().unwrap().contains("redirects to another site"), "{body}");
            }
        }
    }
    // A refused redirect is the backend's answer, not its failure.
    let r = client().get(gw.at("/api/custom_node/route")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A backend speaking HTTP/1.0, written byte by byte: every answer ends its connection.
async fn http10_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let target = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body = if target.starts_with("/object_info") { OBJECT_INFO } else { STATS };
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn an_http_1_1_client_gets_http_1_1_from_an_http_1_0_backend() {
    let (gw, token) = gateway(&http10_backend().await).await;
    for method in ["GET", "HEAD"] {
        let head = format!("{method} /api/custom_node/route HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}");
        let (status, head, body) = raw_request(gw.addr, head.as_bytes(), b"").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.starts_with("HTTP/1.1 200"), "{method}: {head}");
        if method == "GET" {
            assert_eq!(body, STATS.as_bytes());
        }
    }
}

/// The backend's passive health: in service, with no failure recorded.
async fn assert_backend_unharmed(gw: &Gateway, token: &str) {
    let r = client().get(gw.at("/api/custom_node/route")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200, "the backend still serves at once");
    let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(token)).await;
    assert_eq!(state["backends"][0]["healthy"], true, "{state}");
    assert_eq!(state["backends"][0]["last_error"], Value::Null, "{state}");
    let stderr = gw.stderr();
    assert!(!stderr.contains("taken out of service"), "{stderr}");
    assert!(!stderr.contains("backend request failed"), "{stderr}");
}

const MALFORMED_CHUNKS: &[u8] = b"5\r\nhello\r\nZZ";

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_and_never_the_backends_failure() {
    let (gw, token) = gateway(&hostile_backend().await).await;
    for _ in 0..3 {
        let head = format!(
            "POST /api/custom_node/route HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked"
        );
        let (status, head, body) = raw_request(gw.addr, head.as_bytes(), MALFORMED_CHUNKS).await;
        assert_eq!(status, 400, "{head}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "bad_request", "{body}");
    }
    assert_backend_unharmed(&gw, &token).await;
}

#[tokio::test]
async fn a_malformed_upload_body_is_the_clients_400_and_logged_as_no_backend_failure() {
    let (gw, token) = gateway(&hostile_backend().await).await;
    for _ in 0..3 {
        let head = format!(
            "POST /upload/image HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary=XYZ\r\nTransfer-Encoding: chunked"
        );
        let (status, head, _) = raw_request(gw.addr, head.as_bytes(), MALFORMED_CHUNKS).await;
        assert_eq!(status, 400, "{head}");
    }
    assert_backend_unharmed(&gw, &token).await;
}

#[tokio::test]
async fn a_client_leaving_mid_body_is_never_the_backends_failure() {
    let (gw, token) = gateway(&hostile_backend().await).await;
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST /api/custom_node/route HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 1000\r\n\r\nonly a part"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        // It half-closed: it still reads the answer, its own 400.
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_backend_unharmed(&gw, &token).await;
}

#[tokio::test]
async fn a_custom_nodes_websocket_still_upgrades_without_planting_cookies() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (gw, token) = gateway(&hostile_backend().await).await;
    let mut req = format!("ws://{}/api/node_ws", gw.addr).into_client_request().unwrap();
    req.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(response.status(), 101);
    let cookies: Vec<_> = response.headers().get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(cookies, ["node=1"]);
    ws.send(Message::text("ping")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "ping");
}

#[tokio::test]
async fn an_http_2_client_gets_http_2_from_an_http_1_0_backend() {
    let (gw, token) = gateway(&http10_backend().await).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{}/api/custom_node/route", gw.addr))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), axum::http::Version::HTTP_2);
}
