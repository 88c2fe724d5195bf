//! `POST /upload/image` and `/upload/mask`: the multipart body is read as it streams and
//! written anew for ComfyUI, so what ComfyUI stores is decided by the gateway: the file goes
//! into the caller's own input folder (users may only upload `type=input`), its name is a
//! plain name, a mask's `original_ref` must name the caller's own file, and unknown fields are
//! dropped. The file's bytes are never held: they pass chunk by chunk.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::names::{Kind, UserFile, user_view_of};
use super::{least_busy, no_backend, store_unavailable};
use crate::http::{ApiError, Caller, ClientInfo};
use crate::limits::Limits;
use crate::policy::NormalizedPath;
use crate::state::AppState;
use crate::store::StoredFile;

/// Largest upload answer read back (it is a few dozen bytes).
const MAX_UPLOAD_ANSWER: usize = 64 * 1024;
/// Largest text field (`type`, `subfolder`, `overwrite`, `original_ref`).
const MAX_TEXT_FIELD: usize = 64 * 1024;
/// Chunks in flight between the client's body and ComfyUI's.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Answers an upload; one over the uploader's `max_upload` is refused with 413 and audited
/// (`quota_refused`, like the other limits).
pub async fn upload(
    app: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    path: &NormalizedPath,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let context = crate::http::audit_context::of_headers(req.headers(), client);
    let answer = forward_upload(app, caller, client, path, req).await;
    if let Err(ApiError::TooLarge(_)) = &answer {
        let event = crate::audit::Event::refused("quota_refused").user(&caller.identity.username);
        app.audit.note(&context, event.field("limit", "upload_too_large").field("status", 413)).await;
    }
    answer
}

async fn forward_upload(
    app: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    path: &NormalizedPath,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let max_body = app.config.server.max_request_body.as_u64();
    let limits = Limits::of(app.scheduler.store().as_ref(), &app.scheduler.limits(), max_body, caller.identity.user_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read the uploader's limits");
            ApiError::Unavailable("the store is temporarily unavailable".to_owned())
        })?;
    let limit = limits.max_upload;
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge(format!("the upload exceeds your limit of {limit} bytes")));
    }
    let boundary = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| ApiError::BadRequest("an upload must be a multipart/form-data body".to_owned()))?;
    let backend = least_busy(app).ok_or_else(no_backend)?;
    let is_mask = path.route().last() == Some(&"mask");

    let (mut parts, body) = req.into_parts();
    let out_boundary = format!("comfygate-{}", uuid::Uuid::new_v4().simple());
    let refusal: Refusal = Arc::default();
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let rewrite = Rewrite {
        app: app.clone(),
        caller: caller.clone(),
        is_mask,
        boundary: out_boundary.clone(),
        out: tx,
        refusal: refusal.clone(),
    };
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    tokio::spawn(rewrite.run(multer::Multipart::with_constraints(one_chunk_per_poll(body), boundary, constraints)));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    parts.headers.remove(CONTENT_LENGTH);
    let content_type = HeaderValue::from_str(&format!("multipart/form-data; boundary={out_boundary}"))
        .map_err(|_| ApiError::Internal)?;
    parts.headers.insert(CONTENT_TYPE, content_type);
    let req = Request::from_parts(parts, Body::from_stream(stream));

    let result =
        backend.proxy.forward(req, &path.canonical, &caller.identity.username, &client.forwarded(), None).await;
    // The body was refused while it streamed: that is the client's error, whatever ComfyUI made of the cut.
    if let Some(refused) = refusal.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(refused);
    }
    let response = result?;
    if response.status() != StatusCode::OK {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_UPLOAD_ANSWER)
        .collect()
        .await
        .map_err(|_| {
            ApiError::BadGateway(format!("ComfyUI backend `{}` sent an unreadable upload answer", backend.name()))
        })?
        .to_bytes();
    let Ok(mut answer) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    };
    let me = caller.identity.user_id;
    if let Some(name) = answer["name"].as_str() {
        let kind = answer["type"].as_str().unwrap_or("input").to_owned();
        let real = answer["subfolder"].as_str().unwrap_or_default().to_owned();
        let file = StoredFile {
            backend: backend.name().to_owned(),
            kind: kind.clone(),
            subfolder: real.clone(),
            filename: name.to_owned(),
            prompt_id: None,
            user_id: Some(me),
        };
        if let Err(e) = app.scheduler.files().record(&file).await {
            tracing::error!(error = %e, "cannot record an upload");
        }
        if kind == "input" {
            if let Some(seen) = user_view_of(me, &real) {
                answer["subfolder"] = Value::String(seen);
            }
        }
    }
    let mut response = Response::from_parts(parts, Body::from(answer.to_string()));
    response.headers_mut().remove(CONTENT_LENGTH);
    Ok(response)
}

/// The client's body, handing `multer` one chunk per poll: it reads whatever is ready in one
/// go, so with a fast client and a slow backend it would otherwise buffer the whole upload.
fn one_chunk_per_poll(body: Body) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    let mut chunks = body.into_data_stream();
    let mut just_gave = false;
    futures_util::stream::poll_fn(move |cx| {
        if std::mem::take(&mut just_gave) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let item = std::task::ready!(futures_util::StreamExt::poll_next_unpin(&mut chunks, cx));
        just_gave = item.is_some();
        std::task::Poll::Ready(item)
    })
}

/// Why the rewriting stopped the body, for the handler to answer.
type Refusal = Arc<Mutex<Option<ApiError>>>;

struct Rewrite {
    app: AppState,
    caller: Caller,
    is_mask: bool,
    boundary: String,
    out: mpsc::Sender<Result<Bytes, std::io::Error>>,
    refusal: Refusal,
}

/// The client's text fields, each at most once.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    subfolder: Option<String>,
    overwrite: Option<String>,
    original_ref: Option<String>,
}

/// How a rewrite ends early.
enum Stop {
    /// The client's body is refused.
    Refused(ApiError),
    /// ComfyUI's side went away (it answered or failed): nothing more to send.
    Gone,
}

impl Rewrite {
    async fn run(self, mut multipart: multer::Multipart<'static>) {
        if let Err(Stop::Refused(e)) = self.rewrite(&mut multipart).await {
            *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            let _ = self.out.send(Err(std::io::Error::other("upload refused"))).await;
        }
    }

    async fn rewrite(&self, multipart: &mut multer::Multipart<'static>) -> Result<(), Stop> {
        let mut fields = Fields::default();
        let mut has_file = false;
        while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
            let name = field.name().unwrap_or_default().to_owned();
            let slot = match name.as_str() {
                "image" => {
                    if has_file {
                        return Err(refused("the field `image` is given more than once"));
                    }
                    has_file = true;
                    let filename = plain_file_name(field.file_name().unwrap_or_default())?;
                    let content_type = field
                        .content_type()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "application/octet-stream".to_owned());
                    let head = format!(
                        "--{}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\nContent-Type: {}\r\n\r\n",
                        self.boundary,
                        safe_header_text(&content_type)
                    );
                    self.send(Bytes::from(head)).await?;
                    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                        self.send(chunk).await?;
                    }
                    self.send(Bytes::from_static(b"\r\n")).await?;
                    continue;
                }
                "type" => &mut fields.kind,
                "subfolder" => &mut fields.subfolder,
                "overwrite" => &mut fields.overwrite,
                "original_ref" if self.is_mask => &mut fields.original_ref,
                _ => {
                    // Not ComfyUI's: dropped (its bytes still count against the body limit).
                    while field.chunk().await.map_err(malformed)?.is_some() {}
                    continue;
                }
            };
            if slot.is_some() {
                return Err(refused(&format!("the field `{name}` is given more than once")));
            }
            *slot = Some(read_text(&mut field).await?);
        }
        self.finish(fields).await
    }

    /// The fields the gateway decides, after the file.
    async fn finish(&self, fields: Fields) -> Result<(), Stop> {
        let admin = self.caller.identity.is_admin();
        let me = self.caller.identity.user_id;
        let kind = match fields.kind.as_deref().filter(|k| !k.is_empty()) {
            None => Kind::Input,
            Some(k) => Kind::parse(k).ok_or_else(|| refused(&format!("unknown upload type `{k}`")))?,
        };
        if kind != Kind::Input && !admin {
            return Err(refused("users may only upload input files (type=input)"));
        }
        let target = UserFile::folder(kind, fields.subfolder.as_deref().unwrap_or(""))
            .map_err(|e| Stop::Refused(e.into()))?
            .located_for(me);
        self.text("type", kind.as_str()).await?;
        self.text("subfolder", &target.subfolder).await?;
        if let Some(overwrite) = &fields.overwrite {
            self.text("overwrite", overwrite).await?;
        }
        if let Some(original) = &fields.original_ref {
            let reference = self.original_ref(original).await?;
            self.text("original_ref", &reference).await?;
        }
        self.send(Bytes::from(format!("--{}--\r\n", self.boundary))).await
    }

    /// A mask's `original_ref`, resolved like `/view` and limited to the caller's own files.
    async fn original_ref(&self, raw: &str) -> Result<String, Stop> {
        let reference: Value = serde_json::from_str(raw).map_err(|_| refused("original_ref must be a JSON object"))?;
        let text = |key: &str| reference[key].as_str().unwrap_or_default();
        let file = UserFile::resolve(text("filename"), reference["type"].as_str(), text("subfolder"), Kind::Output)
            .map_err(|e| Stop::Refused(e.into()))?;
        let located = file.located_for(self.caller.identity.user_id);
        let access =
            super::access(&self.app, &self.caller, &located).await.map_err(|e| Stop::Refused(store_unavailable(e)))?;
        if matches!(access, super::Access::Denied) {
            return Err(Stop::Refused(ApiError::NotFound("original_ref names no file of yours".to_owned())));
        }
        Ok(json!({"filename": located.filename, "subfolder": located.subfolder, "type": located.kind.as_str()})
            .to_string())
    }

    async fn text(&self, name: &str, value: &str) -> Result<(), Stop> {
        let part = format!("--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n", self.boundary);
        self.send(Bytes::from(part)).await
    }

    async fn send(&self, bytes: Bytes) -> Result<(), Stop> {
        self.out.send(Ok(bytes)).await.map_err(|_| Stop::Gone)
    }
}

/// A text field's value (UTF-8, at most [`MAX_TEXT_FIELD`] bytes).
async fn read_text(field: &mut multer::Field<'static>) -> Result<String, Stop> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(refused("an upload's text field is too long"));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| refused("an upload's text field is not UTF-8"))
}

/// The uploaded file's name: one plain segment, nothing ComfyUI would join outside the folder
/// and nothing that could break the part's header.
fn plain_file_name(name: &str) -> Result<String, Stop> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.chars().any(|c| c.is_control() || matches!(c, '/' | '\\' | '"'));
    if plain { Ok(name.to_owned()) } else { Err(refused("the uploaded file needs a plain file name")) }
}

fn safe_header_text(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

fn refused(message: &str) -> Stop {
    Stop::Refused(ApiError::BadRequest(message.to_owned()))
}

fn malformed(e: multer::Error) -> Stop {
    match e {
        multer::Error::StreamReadFailed(_) => {
            Stop::Refused(ApiError::BadRequest("the upload body could not be read".to_owned()))
        }
        multer::Error::StreamSizeExceeded { limit } => {
            Stop::Refused(ApiError::TooLarge(format!("the upload exceeds your limit of {limit} bytes")))
        }
        other => Stop::Refused(ApiError::BadRequest(format!("the upload is not valid multipart/form-data: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uploaded_names_must_be_plain() {
        for bad in ["", ".", "..", "../x.png", "a/b.png", "a\\b.png", "a\"b.png", "a\r\nb.png", "a\0.png"] {
            assert!(plain_file_name(bad).is_err(), "{bad:?}");
        }
        for good in ["cat.png", "my cat (1).png", "画.png", ".hidden.png", "a..b.png"] {
            assert_eq!(plain_file_name(good).ok().as_deref(), Some(good));
        }
    }
}
