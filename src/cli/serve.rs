//! `comfygate serve`: open the store, make sure an admin exists, start, wait for a signal.

use anyhow::Context;

use comfygate::Config;
use comfygate::app;
use comfygate::audit::Context as Audited;
use comfygate::state::App;
use comfygate::store;

use super::accounts::admin_password_from_env;

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    super::logging::init(&config.log)?;
    let url = config.store.database_url();
    let data_dir = &config.store.data_dir;
    store::private::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
    store::private::warn_if_shared(data_dir);
    // Held until this function returns: one gateway per data folder (`restore` and `reload` ask it).
    let _serving = store::running::RunLock::acquire(data_dir)?;
    let store = store::open(&url).await.context("cannot open the store")?;

    let admin_user = std::env::var("COMFYGATE_ADMIN_USER").unwrap_or_else(|_| "admin".to_owned());
    let admin_password = admin_password_from_env()?;
    let backends: Vec<String> = config.backends.iter().map(|b| format!("{} → {}", b.name, b.url)).collect();
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    let app = App::new(config, store.clone()).await?;
    let first_start = Audited::gateway("first_start");
    if let Some(first) =
        app.auth.accounts().ensure_first_admin(&admin_user, admin_password.as_deref(), &first_start).await?
    {
        println!("comfygate: created the first admin account `{}`", first.user.username);
        if let Some(password) = first.generated_password {
            println!("comfygate: its password is: {password}");
            println!("comfygate: (shown only this once; change it on /comfygate/account after logging in)");
        }
    }

    let running = app::start(app).await?;
    if let Some(at) = running.metrics_addr {
        println!("comfygate metrics on http://{at}{}", comfygate::edge::metrics::PATH);
    }
    println!("comfygate listening on {scheme}://{} (backends: {})", running.addr, backends.join(", "));
    tracing::info!(addr = %running.addr, "comfygate started");

    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    // Closing the pool lets SQLite checkpoint its journal into the database file.
    store.close().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
