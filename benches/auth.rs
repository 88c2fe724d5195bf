//! Auth micro-benchmarks (issue 3): the per-request work the gateway adds before proxying.
//!
//! - token verification on a cache hit (target ≤ 1 µs) and on a miss (SQLite lookup);
//! - session lookup (cookie → identity) on a cache hit;
//! - path normalisation and policy classification of typical ComfyUI request paths.
//!
//! Run with `cargo bench --bench auth` (or through `bench/run`, which copies the key numbers
//! into its report).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use comfygate::auth::{Auth, Presented};
use comfygate::config::AuthConfig;
use comfygate::policy::{RoutePolicy, normalize};
use comfygate::store::Role;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;

struct Fixture {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    auth: Arc<Auth>,
    token: String,
    cookie: String,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let (auth, token, cookie) = rt.block_on(async {
        let store = comfygate::store::open(&url).await.unwrap();
        let mut config = comfygate::Config::default();
        config.store.data_dir = dir.path().to_owned();
        let audit = Arc::new(comfygate::audit::Audit::open(&config, store.clone()).unwrap());
        let auth = Arc::new(Auth::new(store, AuthConfig::default(), Default::default(), audit));
        let password = "bench-password-0123456789";
        let cli = comfygate::audit::Context::cli();
        auth.accounts().create_user("bench", password, Role::User, &cli).await.unwrap();
        let issued = auth.accounts().create_token("bench", "bench", None, &cli).await.unwrap();
        let from = comfygate::audit::Context::request("127.0.0.1".to_owned(), Some("criterion"), None);
        let login = auth.login("bench", password, &from).await.unwrap();
        (auth, issued.secret, login.cookie_value)
    });
    Fixture { _dir: dir, rt, auth, token, cookie }
}

fn auth_benches(c: &mut Criterion) {
    let f = fixture();
    let bearer = Presented::Bearer(f.token.clone());
    let session = Presented::SessionCookie(f.cookie.clone());
    // Warm the cache once so the hit benchmarks measure hits only.
    f.rt.block_on(async {
        f.auth.authenticate(&bearer).await.unwrap();
        f.auth.authenticate(&session).await.unwrap();
    });

    let mut group = c.benchmark_group("auth");
    group.bench_function("token_cache_hit", |b| {
        b.to_async(&f.rt).iter(|| async { black_box(f.auth.authenticate(black_box(&bearer)).await.unwrap()) })
    });
    group.bench_function("token_cache_miss_sqlite", |b| {
        b.to_async(&f.rt).iter(|| async {
            f.auth.revoked();
            black_box(f.auth.authenticate(black_box(&bearer)).await.unwrap())
        })
    });
    group.bench_function("session_cache_hit", |b| {
        b.to_async(&f.rt).iter(|| async { black_box(f.auth.authenticate(black_box(&session)).await.unwrap()) })
    });
    group.bench_function("session_cache_miss_sqlite", |b| {
        b.to_async(&f.rt).iter(|| async {
            f.auth.revoked();
            black_box(f.auth.authenticate(black_box(&session)).await.unwrap())
        })
    });
    group.finish();
}

/// Typical paths: the ComfyUI web app's polling and asset routes, an encoded Manager path.
const PATHS: &[&str] = &[
    "/api/queue",
    "/view",
    "/api/history/0f5d2c3e-4b1a-4c9e-8a7b-1d2e3f4a5b6c",
    "/extensions/core/widgetInputs.js",
    "/api/%6Danager/../userdata/ComfyUI-Manager%2Fconfig.ini",
];

fn policy_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    group.bench_function("normalize_api_queue", |b| b.iter(|| black_box(normalize(black_box("/api/queue")).unwrap())));
    group.bench_function("normalize_mix5", |b| {
        b.iter(|| {
            for p in PATHS {
                black_box(normalize(black_box(p)).unwrap());
            }
        })
    });
    let routes = RoutePolicy::default();
    let queue = normalize("/api/queue").unwrap();
    group.bench_function("classify_api_queue", |b| {
        b.iter(|| black_box(routes.classify(black_box(&Method::GET), black_box(&queue), None)))
    });
    let view_query = Some("filename=ComfyUI_00001_.png&type=output&subfolder=");
    group.bench_function("normalize_and_classify_view", |b| {
        b.iter(|| {
            let n = normalize(black_box("/view")).unwrap();
            black_box(routes.classify(&Method::GET, &n, black_box(view_query)))
        })
    });
    group.finish();
}

criterion_group!(benches, auth_benches, policy_benches);
criterion_main!(benches);
